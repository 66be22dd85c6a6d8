"""Snapshots of the cloud's CRDT state, so what the fleet was told at a time can be proven.

A supervised child (``snapshots``). Every :data:`EVERY_S` seconds (and at start) it reads each
namespace of the cloud's CRDT store (limits, zones, patterns, policies, desired twins...) and,
when a namespace's digest changed since its last snapshot, writes a ``crdt_snapshots`` row
(namespace, time, digest, state) and a ``crdt.snapshot`` entry in the cloud's audit chain
(``cloud.audit_trail``) with the digest: the Merkle log then proves that this was the state at
that time. The digest is SHA-256 over the state's bytes: the msgpack of the namespace's live
rows as ``[[key, value], ...]`` in key order, which :func:`state_digest` recomputes. A state
larger than :data:`MAX_STATE_BYTES` (a namespace of large policy bundles) keeps its digest and
an empty state.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import msgspec

from amcp.runtime.supervisor import ChildContext
from amcp.store import LWWStore, Store, reads
from cloud.audit_trail import CloudTrail
from cloud.storage.engine import Engine, Tx

log = logging.getLogger(__name__)

EVERY_S = 600.0
MAX_STATE_BYTES = 4 * 1024 * 1024
_encode = msgspec.msgpack.Encoder().encode


def state_bytes(rows: dict[str, bytes]) -> bytes:
    return _encode([[k, rows[k]] for k in sorted(rows)])


def state_digest(state: bytes) -> bytes:
    return hashlib.sha256(state).digest()


def _read(core: LWWStore) -> dict[str, bytes]:
    return {ns: state_bytes(core.items(ns)) for ns in reads.namespaces(core.connection)}


def _latest(tx: Tx) -> dict[str, bytes]:
    rows = tx.execute(
        "SELECT s.namespace, s.digest FROM crdt_snapshots AS s JOIN "
        "(SELECT namespace, max(taken_ms) AS taken FROM crdt_snapshots GROUP BY namespace) AS m "
        "ON s.namespace = m.namespace AND s.taken_ms = m.taken"
    )
    return {str(ns): bytes(d) for ns, d in rows}


class Snapshots:
    def __init__(
        self, store: Store, engine: Engine, trail: CloudTrail, *, every_s: float = EVERY_S
    ) -> None:
        self.store = store
        self.engine = engine
        self.trail = trail
        self.every_s = every_s
        self.taken = 0
        self._last_ms = 0

    async def run(self, ctx: ChildContext) -> None:
        ctx.ready()
        while True:
            await self.take()
            await asyncio.sleep(self.every_s)

    async def take(self) -> list[str]:
        """Snapshot the namespaces that changed; their names."""
        states = await self.store.call(_read)
        known = await self.engine.read(_latest)
        now = max(int(time.time() * 1000), self._last_ms + 1)  # a new key every time
        self._last_ms = now
        rows = []
        for ns, state in sorted(states.items()):
            digest = state_digest(state)
            if known.get(ns) == digest:
                continue
            kept = state if len(state) <= MAX_STATE_BYTES else b""
            rows.append((ns, now, digest, kept, len(state)))
        if not rows:
            return []

        def write(tx: Tx) -> None:
            tx.insert_new(
                "crdt_snapshots",
                ("namespace", "taken_ms", "digest", "state"),
                [r[:4] for r in rows],
            )

        await self.trail.append_many(
            [
                ("crdt.snapshot", ns, {"digest": d.hex(), "taken_ms": t, "bytes": n}, "")
                for ns, t, d, _state, n in rows
            ],
            also=write,
            by="snapshots",
        )
        self.taken += len(rows)
        log.info("crdt snapshots taken", extra={"namespaces": [r[0] for r in rows]})
        return [r[0] for r in rows]
