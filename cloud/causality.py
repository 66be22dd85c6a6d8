"""The causality graph: which action led to which, across tiers (``context_graph_nodes`` and
``context_graph_edges``, docs/audit.md "Causality").

A node is something that happened or was decided; an edge ``src -> dst`` says ``src`` caused
``dst``. Node ids are stable names, so the same thing seen twice (an event re-sent after a lost
ack, a bundle applied on fifty gateways) is one node:

- ``reading:{device}/{boot}/{seq}``: a reading (its row is in ``readings``; no node is stored);
- ``event:{16 hex}``: a gateway event, named by the SHA-256 of its gateway and its encoding;
  its kind is ``alert`` for a rule's warning, error or critical event and for an algedonic
  signal, ``event`` otherwise;
- ``mitigation:{16 hex}``: a mitigation proposed for an alert (``cloud.mitigations``);
- ``policy:{name}@{version}``: a signed policy bundle.

Edges, written with the rows that carry them (in the reading store's transaction):

- ``matched``: reading -> the rule event, ``policy.flagged`` or ``policy.enforced`` naming it;
- ``proposed``: alert -> the mitigation proposed for it;
- ``pushed``: mitigation -> the bundle that carries it (the bundle's ``cause``);
- ``applied``: bundle -> a gateway's ``policy.bundle.applied`` event;
- ``enforced``: bundle -> a gateway's ``policy.enforced`` / ``policy.flagged`` event;
- ``caused``: any node named by an event's ``causation`` attribute -> that event.

So the trace of an enforcement walks back: enforced <- bundle <- mitigation <- alert <- the
reading that fired the rule (:mod:`cloud.trace`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from amcp.wire.telemetry import EventRecord
from cloud.storage.engine import Tx

ALERT_SEVERITIES = frozenset({"warning", "error", "critical"})
NODE_COLUMNS = ("id", "kind", "label", "attrs", "created_ms", "updated_ms")
EDGE_COLUMNS = ("src", "kind", "dst", "attrs", "created_ms")
_encode = msgspec.msgpack.Encoder().encode

Node = tuple[str, str, str, str, int, int]
Edge = tuple[str, str, str, str, int]


def reading_id(device: str, boot: str, seq: int) -> str:
    return f"reading:{device}/{boot}/{seq}"


def event_id(gateway: str, event: EventRecord) -> str:
    digest = hashlib.sha256(gateway.encode() + b"\x00" + _encode(event)).hexdigest()
    return f"event:{digest[:16]}"


def policy_id(name: str, version: int) -> str:
    return f"policy:{name}@{version}"


def is_alert(event: EventRecord) -> bool:
    """An event a mitigation may answer: an algedonic signal, or a rule's alert."""
    if event.name == "algedonic":
        return True
    return event.severity in ALERT_SEVERITIES and "rule" in event.attrs


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _reading_of(event: EventRecord) -> str | None:
    """The reading an event names: a rule event's ``reading`` (boot, seq) or a policy event's
    ``boot`` and ``seq``, on the event's source device."""
    nested = event.attrs.get("reading")
    ref: dict[str, Any] = nested if isinstance(nested, dict) else event.attrs
    boot, seq = ref.get("boot"), ref.get("seq")
    if isinstance(boot, str) and isinstance(seq, int) and not isinstance(seq, bool):
        return reading_id(event.source, boot, seq)
    return None


def _policy_of(event: EventRecord) -> str | None:
    name, version = event.attrs.get("policy"), event.attrs.get("version")
    if isinstance(name, str) and isinstance(version, int) and not isinstance(version, bool):
        return policy_id(name, version)
    return None


def event_rows(
    gateway: str, events: Iterable[EventRecord], now_ms: int
) -> tuple[list[Node], list[Edge]]:
    """The nodes and edges a batch of one gateway's (stored) events adds."""
    nodes: list[Node] = []
    edges: list[Edge] = []
    for e in events:
        eid = event_id(gateway, e)
        data: dict[str, Any] = {"gateway": gateway, "name": e.name, "source": e.source}
        data |= {"severity": e.severity, "ts_ms": e.ts_ms, "attrs": e.attrs}
        kind = "alert" if is_alert(e) else "event"
        nodes.append((eid, kind, e.name, _json(data), now_ms, now_ms))
        reading = _reading_of(e)
        if reading is not None and (e.name.startswith("policy.") or "rule" in e.attrs):
            edges.append((reading, "matched", eid, "{}", now_ms))
        policy = _policy_of(e)
        if policy is not None and e.name == "policy.bundle.applied":
            edges.append((policy, "applied", eid, _json({"gateway": gateway}), now_ms))
        elif policy is not None and e.name in {"policy.enforced", "policy.flagged"}:
            edges.append((policy, "enforced", eid, _json({"gateway": gateway}), now_ms))
        cause = e.attrs.get("causation")
        if isinstance(cause, str) and cause:
            if policy is not None and e.name == "policy.bundle.applied":
                edges.append((cause, "pushed", policy, "{}", now_ms))
            else:
                edges.append((cause, "caused", eid, "{}", now_ms))
    return nodes, edges


def write(tx: Tx, nodes: Sequence[Node], edges: Sequence[Edge]) -> None:
    """Add nodes and edges not there yet (in key order: concurrent writers never deadlock)."""
    if nodes:
        tx.insert_new("context_graph_nodes", NODE_COLUMNS, sorted(set(nodes)))
    if edges:
        tx.insert_new("context_graph_edges", EDGE_COLUMNS, sorted(set(edges)))
