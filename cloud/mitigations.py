"""S4's first loop: every alert a gateway raises gets a mitigation proposal.

A supervised child of the cloud (``mitigations``). Each round takes the alerts of the
causality graph (:mod:`cloud.causality`: a rule's warning, error or critical event, an
algedonic signal) that have no proposal yet, asks the LLM engine's ``mitigate`` task for each
(the built-in planner answers when no model is configured: a flood is rate-limited, a value out
of range dropped, a stuck sensor flagged, a security event quarantined, anything else noted for
the operators), and writes the answer as a ``mitigation:`` node with a ``proposed`` edge from
the alert. Alerts that get the same answer (the same device flooding again) share one
proposal. Nothing is pushed to a gateway by this loop: an operator reviews a proposal
(``cybernetic mitigation list|show``) and pushes its policy with
``cybernetic policy push FILE --cause mitigation:ID``; the bundle carries the cause to the
gateways, whose ``policy.bundle.applied`` and ``policy.enforced`` events close the chain that
``cybernetic trace`` walks.

The anomaly handed to the task is read off the alert: ``attrs.anomaly`` (a rule can name one),
else the last part of the event's name (``rules.flood`` -> ``flood``); the device is the
event's source; ``metric``, ``value``, ``threshold``, ``rate_per_s`` and ``limit_per_s`` come
from the event's attributes when present. A proposal that cannot be made (the task refused the
data) is still written, with action ``none`` and the reason, so the alert is answered once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any, Protocol

from amcp.runtime.supervisor import ChildContext
from cloud.audit_trail import CloudTrail
from cloud.causality import EDGE_COLUMNS, NODE_COLUMNS
from cloud.llm.errors import LlmError, OutputRefused, TaskDataError
from cloud.storage.engine import Engine, Tx

log = logging.getLogger(__name__)

BATCH = 100
_NUMBERS = ("value", "threshold", "rate_per_s", "limit_per_s")


class MitigationTask(Protocol):
    async def run_task(self, name: str, data: dict[str, Any], *, caller: str = "") -> Any: ...


def anomaly(alert: dict[str, Any]) -> dict[str, Any]:
    """The ``mitigate`` task's data for an alert node's stored attributes."""
    attrs = alert.get("attrs") if isinstance(alert.get("attrs"), dict) else {}
    assert isinstance(attrs, dict)
    name = str(alert.get("name", ""))
    kind = attrs.get("anomaly") if isinstance(attrs.get("anomaly"), str) else ""
    data: dict[str, Any] = {
        "kind": kind or name.rpartition(".")[2] or "alert",
        "device": str(alert.get("source", "")),
        "gateway": str(alert.get("gateway", "")),
    }
    if isinstance(attrs.get("zone"), str):
        data["zone"] = attrs["zone"]
    if isinstance(attrs.get("metric"), str):
        data["metric"] = attrs["metric"]
    for field in _NUMBERS:
        value = attrs.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            data[field] = float(value)
    return data


def _proposal_id(answer: dict[str, Any]) -> str:
    text = json.dumps(answer, sort_keys=True, separators=(",", ":"), default=str)
    return "mitigation:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _unanswered(tx: Tx, since_ms: int) -> list[tuple[str, str, int]]:
    return [
        (str(nid), str(attrs) if isinstance(attrs, str) else json.dumps(attrs), int(created))
        for nid, attrs, created in tx.execute(
            "SELECT n.id, n.attrs, n.created_ms FROM context_graph_nodes n "
            "WHERE n.kind = 'alert' AND n.created_ms >= ? "
            "AND NOT EXISTS (SELECT 1 FROM context_graph_edges e "
            "WHERE e.src = n.id AND e.kind = 'proposed') "
            "ORDER BY n.created_ms, n.id LIMIT ?",
            (since_ms, BATCH),
        )
    ]


class Mitigations:
    def __init__(
        self,
        engine: Engine,
        llm: MitigationTask,
        *,
        interval_s: float = 1.0,
        trail: CloudTrail | None = None,
    ) -> None:
        self.engine = engine
        self.llm = llm
        self.trail = trail
        self.interval_s = interval_s
        self.proposed = 0
        self._since_ms = 0
        """Alerts stored before this are answered (rescanned from 0 at each start)."""

    async def run(self, ctx: ChildContext) -> None:
        ctx.ready()
        while True:
            if await self.round() < BATCH:
                await asyncio.sleep(self.interval_s)

    async def round(self) -> int:
        """Answer up to :data:`BATCH` alerts; how many were answered."""
        alerts = await self.engine.read(lambda tx: _unanswered(tx, self._since_ms))
        if not alerts:
            return 0
        nodes: list[tuple[object, ...]] = []
        edges: list[tuple[object, ...]] = []
        now = int(time.time() * 1000)
        done = []
        for alert in alerts:
            alert_id, raw, _created = alert
            try:
                answer = await self._propose(json.loads(raw))
            except LlmError as exc:  # no provider now (budget, outage): the rest wait a round
                log.warning("mitigation not proposed yet", extra={"error": str(exc)})
                break
            done.append(alert)
            pid = _proposal_id(answer)
            label = f"{answer.get('action', 'none')}: {answer.get('reason', '')}"
            nodes.append((pid, "mitigation", label, json.dumps(answer), now, now))
            edges.append((alert_id, "proposed", pid, "{}", now))
        if not done:
            return 0
        await self.engine.write(lambda tx: _write(tx, nodes, edges))
        if self.trail is not None:
            await self.trail.append_many(
                [
                    ("s4.mitigation.proposed", str(pid), {"action": label}, str(alert))
                    for (pid, _k, label, *_), (alert, *_) in zip(nodes, edges, strict=True)
                ],
                by="s4",
            )
        # a transaction stamped earlier may commit later: look back a minute (answered alerts
        # are skipped by the query, so this costs a scan of that minute, never a repeat)
        self._since_ms = max(self._since_ms, done[-1][2] - 60_000)
        self.proposed += len(done)
        log.info("mitigations proposed", extra={"alerts": len(done)})
        return len(done)

    async def _propose(self, alert: dict[str, Any]) -> dict[str, Any]:
        data = anomaly(alert)
        try:
            answer = await self.llm.run_task("mitigate", data, caller="s4.mitigations")
        except (TaskDataError, OutputRefused) as exc:  # this alert's own: answered with none
            return {"action": "none", "target": data, "reason": f"no proposal: {exc}"}
        value = answer.value if hasattr(answer, "value") else answer
        out = dict(value) if isinstance(value, dict) else {"action": "none", "reason": str(value)}
        out["provider"] = getattr(answer, "provider", "")
        return out


def _write(tx: Tx, nodes: list[tuple[object, ...]], edges: list[tuple[object, ...]]) -> None:
    tx.insert_new("context_graph_nodes", NODE_COLUMNS, sorted(set(nodes), key=str))
    tx.insert_new("context_graph_edges", EDGE_COLUMNS, sorted(set(edges), key=str))


def proposals(tx: Tx, limit: int = 50) -> list[tuple[str, dict[str, Any], int]]:
    """The newest proposals with how many alerts each answers, newest last."""
    rows = tx.execute(
        "SELECT n.id, n.attrs, (SELECT COUNT(*) FROM context_graph_edges e "
        "WHERE e.dst = n.id AND e.kind = 'proposed') FROM context_graph_nodes n "
        "WHERE n.kind = 'mitigation' ORDER BY n.created_ms DESC, n.id DESC LIMIT ?",
        (limit,),
    )
    out = []
    for nid, attrs, count in rows:
        data = json.loads(attrs) if isinstance(attrs, str) else dict(attrs)
        out.append((str(nid), data, int(count)))
    return list(reversed(out))
