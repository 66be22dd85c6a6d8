"""The gateway's own report for ``cybernetic status`` (served as ``/status``, docs/operations.md).

Everything here is read from memory on the event loop, cheaply: a status request never waits
for a database or a broker.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from amcp import __version__
from amcp.runtime.supervisor import tree_json

if TYPE_CHECKING:
    from gateway.app import Gateway


def report(gw: Gateway) -> dict[str, Any]:
    now = time.time()
    box = gw.outbox.snapshot()
    sync = gw.sync.engine.stats
    policy = None
    if gw.policy is not None:
        manifest = gw.policy.agent.manifest
        counts = gw.policy.counts
        policy = {
            "policy": manifest.policy,
            "version": manifest.version,
            "flagged": counts.flagged,
            "denied": counts.denied,
            "faults": counts.faults,
        }
    rules = gw.rules.snapshot()
    return {
        "component": "gateway",
        "version": __version__,
        "node_id": gw.config.gateway.id,
        "uptime_s": round(time.monotonic() - gw.started, 1),
        "sessions": {s.name: s.connected for s in gw.sessions()},
        "ingest": {"paused": gw.ingest.paused, "pending": gw.ingest.pending()},
        "outbox": {
            "rows": box.rows,
            "bytes": box.bytes,
            "oldest_age_s": None if box.oldest_ms is None else round(now - box.oldest_ms / 1000, 1),
            "batches_in_flight": box.open_batches,
            "storage_full": box.full,
        },
        "uplink": {"connected": gw.uplink.connected, "lag_s": round(gw.uplink.lag_s, 3)},
        "sync": {
            "enabled": gw.config.sync.enabled,
            "connected": gw.sync.connected,
            "last_received_age_s": (
                round(now - sync.last_received_ms / 1000, 1) if sync.last_received_ms else None
            ),
            "rows_sent": sync.rows_sent,
            "rows_merged": sync.rows_merged,
        },
        "policy": policy,
        "patterns": {"generation": rules["generation"], "rules": rules["rules"]},
        "limits": gw.limits.snapshot(),
        "events": {"queued": gw.events.queued(), "dropped": dict(gw.events.dropped)},
        "supervisor": tree_json(gw.supervisor.tree()),
    }
