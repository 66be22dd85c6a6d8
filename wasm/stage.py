"""The gateway's policy step at telemetry ingest, and the config that sets it up.

:class:`PolicyStage` has the shape of the gateway's ingest ``Stage`` (``list[Reading] ->
list[Reading]``, run on the event loop before the outbox transaction): it stores what the
policy keeps, drops what it denies, rewrites what it transforms, and logs flags and denials.
Agents are swapped atomically with :meth:`PolicyStage.swap` (a new policy version takes
effect between two batches, never inside one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from amcp.wire.telemetry import EventRecord, Reading
from wasm.config import PolicyConfig
from wasm.decision import Decision
from wasm.enforcement import enforce
from wasm.errors import AgentFaultError
from wasm.host import PolicyAgent
from wasm.sandbox import AgentLimits

log = logging.getLogger(__name__)


@dataclass
class StageCounts:
    """Running totals since start, for the gateway's metrics."""

    allowed: int = 0
    flagged: int = 0
    denied: int = 0
    transformed: int = 0
    faults: int = 0


Report = Callable[[list[EventRecord]], object]
"""Where ``policy.flagged`` events go (the gateway's event writer)."""

Identity = tuple[str, str, int]
_ENFORCED_SLOTS = 4096


class PolicyStage:
    """Enforces one policy agent on each ingest batch: a filter before the outbox commit
    (:meth:`__call__`) and an observer after it (:meth:`observe`), which turns each *stored*
    flagged reading into a ``policy.flagged`` event for the cloud (docs/policy-language.md)."""

    def __init__(
        self,
        agent: PolicyAgent,
        on_fault: Literal["keep", "drop"] = "keep",
        *,
        report: Report | None = None,
    ) -> None:
        self.agent = agent
        self.on_fault = on_fault
        self.counts = StageCounts()
        self.report = report
        self._flagged: dict[Identity, tuple[str | None, str]] = {}
        """This batch's flags, waiting for the commit (only stored readings are reported)."""
        self._enforced: set[tuple[str, int, str]] = set()
        """(policy, version, rule) that denied a reading already (``policy.enforced``)."""

    @classmethod
    def from_config(
        cls, config: PolicyConfig, base: Path | None = None, *, report: Report | None = None
    ) -> PolicyStage:
        """Compile/load the configured policy (blocking: milliseconds; call before serving or
        in a worker thread). A relative ``file`` is taken relative to ``base``."""
        return cls(load_agent(config, base), config.on_fault, report=report)

    def apply(self, config: PolicyConfig, base: Path | None = None) -> None:
        """Reload (blocking, as :meth:`from_config`): the policy file compiled again with the
        configured zones and memory, then swapped in; ``on_fault`` applies at once."""
        agent = load_agent(config, base)
        self.on_fault = config.on_fault
        self.swap(agent)

    def swap(self, agent: PolicyAgent) -> None:
        """Use ``agent`` from the next batch on (one reference assignment: atomic)."""
        self.agent = agent

    def set_zones(self, zones: Mapping[str, str]) -> None:
        self.agent.set_zones(zones)

    def __call__(self, readings: list[Reading]) -> list[Reading]:
        self._flagged.clear()  # a new batch: the last one's flags were observed or refused
        if not readings:
            return readings
        counts = self.counts
        try:
            result = enforce(self.agent, readings)
        except AgentFaultError as exc:
            counts.faults += 1
            log.warning(
                "policy agent fault; batch %s",
                "kept unchecked" if self.on_fault == "keep" else "dropped",
                extra={"error": str(exc), "readings": len(readings)},
            )
            return readings if self.on_fault == "keep" else []
        counts.flagged += len(result.flagged)
        counts.denied += len(result.denied)
        counts.transformed += result.transformed
        counts.allowed += len(result.kept) - len(result.flagged) - result.transformed
        for reading, decision in result.flagged:
            log.debug("reading flagged", extra=_extra(reading, decision.rule, decision.reason))
            if self.report is not None:
                identity = (reading.device, reading.boot, reading.seq)
                self._flagged[identity] = (decision.rule, decision.reason)
        for reading, decision in result.denied:
            log.debug("reading denied", extra=_extra(reading, decision.rule, decision.reason))
        if result.denied and self.report is not None:
            self._first_denials(result.denied)
        return result.kept

    def _first_denials(self, denied: list[tuple[Reading, Decision]]) -> None:
        """A ``policy.enforced`` event for the first reading each rule of the running policy
        version denies: the moment a policy (a mitigation, say) starts to act, audited on the
        gateway and traced in the cloud back to the bundle and what caused it."""
        manifest = self.agent.manifest
        events = []
        for reading, decision in denied:
            slot = (manifest.policy, manifest.version, decision.rule or "")
            if slot in self._enforced:
                continue
            if len(self._enforced) >= _ENFORCED_SLOTS:
                continue  # bounded: a policy with this many rules reports the first ones
            self._enforced.add(slot)
            attrs: dict[str, object] = {
                "policy": manifest.policy,
                "version": manifest.version,
                "rule": decision.rule or "",
                "reason": decision.reason,
                "boot": reading.boot,
                "seq": reading.seq,
            }
            events.append(
                EventRecord("policy.enforced", reading.ts_ms, reading.device, "info", attrs)
            )
        if events and self.report is not None:
            self.report(events)

    def observe(self, readings: list[Reading]) -> None:
        """After the commit, on the stored readings: a ``policy.flagged`` event for each
        flagged one."""
        if not self._flagged or self.report is None:
            return
        manifest = self.agent.manifest
        events = []
        for reading in readings:
            found = self._flagged.pop((reading.device, reading.boot, reading.seq), None)
            if found is None:
                continue
            rule, reason = found
            attrs: dict[str, object] = {
                "policy": manifest.policy,
                "version": manifest.version,
                "rule": rule,
                "reason": reason,
                "boot": reading.boot,
                "seq": reading.seq,
                "values": dict(reading.values),
            }
            events.append(
                EventRecord("policy.flagged", reading.ts_ms, reading.device, "warning", attrs)
            )
        self._flagged.clear()
        if events:
            self.report(events)


def load_agent(config: PolicyConfig, base: Path | None = None) -> PolicyAgent:
    """The agent of ``config``: its file (relative to ``base``, the configuration's folder)
    compiled or loaded with its zones and memory limit."""
    path = Path(config.file)
    if base is not None and not path.is_absolute():
        path = base / path
    agent = PolicyAgent.load(
        path, zones=config.zones, limits=AgentLimits(memory_bytes=config.memory_bytes)
    )
    log.info(
        "policy loaded",
        extra={"policy": agent.manifest.policy, "version": agent.manifest.version},
    )
    return agent


def _extra(reading: Reading, rule: str | None, reason: str) -> dict[str, object]:
    return {"device": reading.device, "seq": reading.seq, "rule": rule, "reason": reason}
