"""Reported device twins: each device's latest values, kept in the CRDT store and synced.

The gateway is the authority for what a device *reports* (``twin.reported``); the cloud writes
what it *wants* (``twin.desired``) and the difference is what the device still has to do
(:mod:`amcp.store.twins`). Writing a row per reading would cost more than the reading itself,
so the ingest stage only remembers the newest values per device (a dict assignment) and a
supervised child writes the changed devices every ``interval`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from amcp.runtime.storage import is_storage_full
from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.store.twins import Twins
from amcp.wire.telemetry import Reading

log = logging.getLogger(__name__)


class TwinReporter:
    def __init__(self, store: Store, interval: float = 5.0) -> None:
        self.twins = Twins(store)
        self.interval = interval
        self._latest: dict[str, Reading] = {}
        self.reported = 0

    def stage(self, readings: list[Reading]) -> list[Reading]:
        latest = self._latest
        for r in readings:
            latest[r.device] = r
        return readings

    async def flush(self) -> int:
        """Write every device seen since the last flush; returns how many."""
        pending, self._latest = self._latest, {}
        done = 0
        for device, r in pending.items():
            state: dict[str, Any] = dict(r.values)
            state["last_seen_ms"] = r.ts_ms
            try:
                await self.twins.report(device, state)
            except ValueError as exc:  # a device id the twin key scheme cannot hold
                log.warning("twin not reported", extra={"device": device, "error": str(exc)})
            except Exception as exc:
                if not is_storage_full(exc):
                    raise
                # a full disk: keep what is not written yet (newer readings win) and try
                # again at the next flush; twins are state, so only the latest matters
                for rest in list(pending)[done:]:
                    self._latest.setdefault(rest, pending[rest])
                log.warning("twins not reported: disk full", extra={"error": str(exc)})
                break
            done += 1
        self.reported += done
        return done

    async def run(self, ctx: ChildContext) -> None:
        ctx.ready()
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())
