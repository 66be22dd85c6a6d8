"""The cloud's own report for ``cybernetic status`` (served as ``/status``), from memory."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from amcp import __version__
from amcp.runtime.supervisor import tree_json

if TYPE_CHECKING:
    from cloud.app import Cloud


def _counter(cloud: Cloud, name: str) -> int:
    return int(cloud.registry.get_sample_value(name) or 0)


def report(cloud: Cloud) -> dict[str, Any]:
    now = time.time()
    sync = cloud.sync.engine.stats
    return {
        "component": "cloud",
        "version": __version__,
        "node_id": cloud.config.cloud.id,
        "uptime_s": round(time.monotonic() - cloud.started, 1),
        "sessions": {s.name: s.connected for s in cloud.sessions()},
        "ingest": {
            "paused": cloud.ingest.paused,
            "batches": _counter(cloud, "cybernetic_cloud_batches_total"),
            "stored_readings": _counter(cloud, "cybernetic_cloud_stored_readings_total"),
            "duplicate_readings": _counter(cloud, "cybernetic_cloud_duplicate_readings_total"),
        },
        "sync": {
            "enabled": cloud.config.sync.enabled,
            "connected": cloud.sync.connected,
            "last_received_age_s": (
                round(now - sync.last_received_ms / 1000, 1) if sync.last_received_ms else None
            ),
            "peers": len(cloud.sync.engine.sessions),
        },
        "fleet": cloud.fleet.report(),
        "storage": {
            "engine": cloud.engine.name,
            "at": cloud.engine.describe(),
            "reachable": cloud.registry.get_sample_value("cybernetic_storage_reachable") != 0,
        },
        "audit": {
            "entries": len(cloud.audit.tree),
            "findings": int(
                sum(
                    s.value
                    for m in cloud.audit.findings.collect()
                    for s in m.samples
                    if s.name.endswith("_total")
                )
            ),
        },
        "supervisor": tree_json(cloud.supervisor.tree()),
    }
