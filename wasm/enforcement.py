"""Applying decisions at telemetry ingest: what goes on to the outbox, what is flagged or dropped.

The gateway calls :func:`enforce` on each ingested batch before its outbox transaction:
``kept`` is what it stores (allowed, flagged and transformed readings, in arrival order, with
transforms applied); ``flagged`` and ``denied`` carry the decisions for events and audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from amcp.wire.telemetry import Reading
from wasm.decision import Decision
from wasm.host import PolicyAgent


@dataclass
class Enforced:
    kept: list[Reading] = field(default_factory=list)
    flagged: list[tuple[Reading, Decision]] = field(default_factory=list)
    denied: list[tuple[Reading, Decision]] = field(default_factory=list)
    transformed: int = 0


def enforce(agent: PolicyAgent, readings: Sequence[Reading]) -> Enforced:
    """Decide ``readings`` with ``agent`` and split them; raises ``AgentFaultError`` unchanged
    (the caller chooses fail-open or fail-closed for that batch)."""
    out = Enforced()
    for reading, decision in zip(readings, agent.evaluate_batch(readings), strict=True):
        action = decision.action
        if action == "allow":
            out.kept.append(reading)
        elif action == "deny":
            out.denied.append((reading, decision))
        elif action == "flag":
            out.kept.append(reading)
            out.flagged.append((reading, decision))
        else:
            out.kept.append(msgspec.structs.replace(reading, values=decision.values or {}))
            out.transformed += 1
    return out
