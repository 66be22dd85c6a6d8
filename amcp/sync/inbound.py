"""The receiving side of a delta: authority, merge, and the record of what was refused.

Refused rows are dropped from their batch (the rest is merged and the batch acknowledged,
so one bad row never stalls a stream); rows the store finds invalid are dropped the same way.
Every refusal is counted, passed to ``on_refused``, and the first few of each batch are kept
as local events in :data:`~amcp.sync.authority.REFUSED_NAMESPACE`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from amcp.runtime.clock import Clock
from amcp.store import Chunk, InvalidRowError, Row, Store
from amcp.sync.authority import REFUSED_NAMESPACE, Authority, Refusal
from amcp.sync.frames import Delta, unpack_changes
from amcp.sync.stats import Role, SyncStats

log = logging.getLogger(__name__)

MAX_RECORDED_PER_BATCH = 100
_refusal_encoder = msgspec.msgpack.Encoder()


class Inbound:
    def __init__(
        self,
        store: Store,
        role: Role,
        *,
        authority: Authority,
        stats: SyncStats,
        clock: Clock,
        on_refused: Callable[[Refusal], None] | None,
    ) -> None:
        self.store = store
        self.role = role
        self.authority = authority
        self.stats = stats
        self._clock = clock
        self._on_refused = on_refused

    def admit(self, peer: str, delta: Delta) -> tuple[list[Row], list[Chunk], list[Refusal]]:
        """Decode a delta and split it into what authority allows and what it refuses."""
        changes = unpack_changes(delta)
        if self.role is Role.CLOUD:

            def why(item: Row | Chunk) -> str | None:
                return self.authority.from_gateway(peer, item)
        else:
            why = self.authority.from_cloud
        rows: list[Row] = []
        chunks: list[Chunk] = []
        refused: list[Refusal] = []
        now_ms = int(self._clock.time() * 1000)
        items: list[Row | Chunk] = [*changes.rows, *changes.chunks]
        for item in items:
            reason = why(item)
            if reason is not None:
                if isinstance(item, Row):
                    refused.append(
                        Refusal(peer, item.namespace, item.key, item.site, item.hlc, reason, now_ms)
                    )
            elif isinstance(item, Row):
                rows.append(item)
            else:
                chunks.append(item)
        return rows, chunks, refused

    async def merge(
        self,
        peer: str,
        rows: list[Row],
        chunks: list[Chunk],
        version: int,
        refused: list[Refusal],
    ) -> None:
        """Merge, dropping (and recording) any row the store finds invalid."""
        while True:
            try:
                await self.store.merge(rows, chunks, peer=peer, peer_version=version)
            except InvalidRowError as exc:
                bad = (exc.namespace, exc.key)
                now_ms = int(self._clock.time() * 1000)
                drop = [r for r in rows if (r.namespace, r.key) == bad]
                kept_chunks = [c for c in chunks if (c.namespace, c.key) != bad]
                if not drop and len(kept_chunks) == len(chunks):
                    raise
                refused += [
                    Refusal(peer, r.namespace, r.key, r.site, r.hlc, exc.reason, now_ms)
                    for r in drop
                ]
                rows = [r for r in rows if (r.namespace, r.key) != bad]
                chunks = kept_chunks
            else:
                return

    async def record(self, refused: list[Refusal]) -> None:
        """Count every refused row; keep the first few of a batch as local events."""
        self.stats.refused += len(refused)
        for r in refused:
            self.stats.refused_by[r.peer, r.namespace, r.reason] += 1
            if self._on_refused is not None:
                self._on_refused(r)
        first = refused[0]
        log.warning(
            "sync: rows refused by authority",
            extra={
                "peer": first.peer,
                "rows": len(refused),
                "namespace": first.namespace,
                "reason": first.reason,
            },
        )
        await self.store.write(
            (REFUSED_NAMESPACE, f"{r.peer}/{r.namespace}/{r.key}", _refusal_encoder.encode(r))
            for r in refused[:MAX_RECORDED_PER_BATCH]
        )
