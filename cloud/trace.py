"""Tracing an action through the causality graph (:mod:`cloud.causality`): what caused it,
back to the readings, and what it caused in turn.

:func:`trace` runs in one read snapshot of the cloud store and returns a :class:`Trace`: the
nodes reached (each resolved: a graph node's stored data, a reading's row from ``readings``,
a bundle's name and version) and the edges between them. It walks causes (``back``), effects
(``forward``) or both, at most ``depth`` steps and ``limit`` nodes (a node with a thousand
effects, such as a bundle applied on every gateway, is cut and says so). ``cybernetic trace
ID`` prints it as a tree; the API serves it as JSON (``/trace/{id}``).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Literal

import msgspec

from cloud.storage.engine import Tx

Direction = Literal["back", "forward", "both"]
MAX_NODES = 1000


class TraceNode(msgspec.Struct, frozen=True):
    id: str
    kind: str
    """``alert``, ``event``, ``mitigation``, ``reading``, ``policy``, or ``unknown`` (an id
    an edge names that nothing stored describes)."""
    label: str
    ts_ms: int = 0
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)


class TraceEdge(msgspec.Struct, frozen=True):
    src: str
    kind: str
    dst: str


class Trace(msgspec.Struct, frozen=True):
    root: str
    nodes: list[TraceNode]
    edges: list[TraceEdge]
    truncated: bool = False


def _reading(tx: Tx, node_id: str) -> TraceNode:
    device, _, rest = node_id.removeprefix("reading:").partition("/")
    boot, _, seq_text = rest.rpartition("/")
    rows = []
    if seq_text.isdigit():
        rows = tx.execute(
            'SELECT gateway, ts_ms, "values" FROM readings WHERE device = ? AND boot = ? '
            "AND seq = ?",
            (device, boot, int(seq_text)),
        )
    if not rows:
        return TraceNode(node_id, "reading", f"reading {device} (not stored)")
    gateway, ts_ms, values = rows[0]
    data = json.loads(values) if isinstance(values, str) else values
    return TraceNode(
        node_id,
        "reading",
        f"reading {device}",
        int(ts_ms),
        {"gateway": gateway, "device": device, "boot": boot, "seq": int(seq_text), "values": data},
    )


def resolve(tx: Tx, node_id: str) -> TraceNode | None:
    """What is known of one node (None: nothing, and no edge names it either)."""
    if node_id.startswith("reading:"):
        return _reading(tx, node_id)
    rows = tx.execute(
        "SELECT kind, label, attrs, created_ms FROM context_graph_nodes WHERE id = ?", (node_id,)
    )
    if rows:
        kind, label, attrs, created = rows[0]
        data = json.loads(attrs) if isinstance(attrs, str) else dict(attrs)
        return TraceNode(node_id, kind, label, int(data.get("ts_ms") or created), data)
    if node_id.startswith("policy:"):
        name, _, version = node_id.removeprefix("policy:").rpartition("@")
        return TraceNode(node_id, "policy", f"policy bundle {name} version {version}")
    named = tx.execute(
        "SELECT 1 FROM context_graph_edges WHERE src = ? OR dst = ? LIMIT 1", (node_id, node_id)
    )
    return TraceNode(node_id, "unknown", node_id) if named else None


def _next(tx: Tx, node_id: str, direction: Direction) -> list[TraceEdge]:
    out: list[TraceEdge] = []
    if direction in {"back", "both"}:
        rows = tx.execute(
            "SELECT src, kind FROM context_graph_edges WHERE dst = ? ORDER BY created_ms, src",
            (node_id,),
        )
        out += [TraceEdge(src, kind, node_id) for src, kind in rows]
    if direction in {"forward", "both"}:
        rows = tx.execute(
            "SELECT dst, kind FROM context_graph_edges WHERE src = ? ORDER BY created_ms, dst",
            (node_id,),
        )
        out += [TraceEdge(node_id, kind, dst) for dst, kind in rows]
    return out


def trace(
    tx: Tx,
    node_id: str,
    *,
    direction: Direction = "back",
    depth: int = 32,
    limit: int = MAX_NODES,
) -> Trace | None:
    """The trace of ``node_id`` (None when nothing is known of it)."""
    root = resolve(tx, node_id)
    if root is None:
        return None
    nodes = {node_id: root}
    edges: dict[tuple[str, str, str], TraceEdge] = {}
    queue = deque([(node_id, 0)])
    truncated = False
    while queue:
        current, steps = queue.popleft()
        if steps >= depth:
            truncated = truncated or bool(_next(tx, current, direction))
            continue
        for edge in _next(tx, current, direction):
            edges[(edge.src, edge.kind, edge.dst)] = edge
            other = edge.src if edge.dst == current else edge.dst
            if other in nodes:
                continue
            if len(nodes) >= limit:
                truncated = True
                continue
            found = resolve(tx, other)
            nodes[other] = found if found is not None else TraceNode(other, "unknown", other)
            queue.append((other, steps + 1))
    kept = [e for e in edges.values() if e.src in nodes and e.dst in nodes]
    return Trace(node_id, list(nodes.values()), kept, truncated)


def recent(tx: Tx, kind: str | None = None, limit: int = 20) -> list[TraceNode]:
    """The newest graph nodes (of one kind), newest last: where a trace starts."""
    sql = "SELECT id, kind, label, attrs, created_ms FROM context_graph_nodes"
    params: list[object] = []
    if kind:
        sql += " WHERE kind = ?"
        params.append(kind)
    sql += " ORDER BY created_ms DESC, id DESC LIMIT ?"
    params.append(limit)
    out = []
    for nid, nkind, label, attrs, created in tx.execute(sql, params):
        data = json.loads(attrs) if isinstance(attrs, str) else dict(attrs)
        out.append(TraceNode(nid, nkind, label, int(data.get("ts_ms") or created), data))
    return list(reversed(out))
