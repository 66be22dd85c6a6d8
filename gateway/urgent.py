"""The urgent lane: algedonic signals and rule alerts, ahead of any telemetry backlog.

An event marked ``urgent`` (:class:`~amcp.wire.telemetry.EventRecord`) is kept here instead of
in the outbox's queue, in a small SQLite file of its own (``urgent.sqlite3``, the same
durability: ``synchronous=FULL``, deleted only after the cloud's commit). The uplink sends
what is here before any batch of the outbox, on its own topic (``{prefix}/{gateway}/urgent``),
so a pain signal raised during a 50,000-reading backlog reaches the cloud before the backlog
does; the cloud stores it like any batch and acknowledges it on the usual ack topic.

The lane is bounded (``max_rows``): beyond it the oldest urgent rows move to the outbox's
ordinary queue rather than being dropped (see :meth:`UrgentLane.overflow`), so a storm of
alerts cannot starve telemetry and loses nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from amcp.runtime.database import Database, Schema

_TABLE = (
    "CREATE TABLE urgent (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "added_ms INTEGER NOT NULL, body BLOB NOT NULL)"
)
SCHEMA = Schema("urgent", (_TABLE,))
BATCH_MAX = 500


@dataclass
class UrgentBatch:
    batch_id: str
    ids: list[int]
    events: list[bytes]
    oldest_ms: int
    sent: bool = field(default=False)


class UrgentLane:
    def __init__(self, path: Path, *, max_rows: int = 10_000) -> None:
        self.path = path
        self.max_rows = max_rows
        self._file = Database(path, name="urgent", schema=SCHEMA, synchronous="FULL")
        self._open: dict[str, UrgentBatch] = {}
        self._batched: set[int] = set()
        self.rows = 0
        self.appended = asyncio.Event()

    async def open(self) -> None:
        await self._file.open()
        self._open.clear()
        self._batched.clear()
        self.rows = await self._file.read(_count)

    async def close(self) -> None:
        await self._file.close()

    async def held(self) -> None:
        await self._file.held()

    async def append(self, bodies: Sequence[bytes], now_ms: int) -> int:
        """Keep encoded urgent events (committed before this returns)."""
        if not bodies:
            return 0

        def add(db: sqlite3.Connection) -> int:
            db.executemany(
                "INSERT INTO urgent (added_ms, body) VALUES (?, ?)", [(now_ms, b) for b in bodies]
            )
            return len(bodies)

        n = await self._file.write(add)
        self.rows += n
        self.appended.set()
        return n

    @property
    def over(self) -> int:
        """Rows beyond ``max_rows`` (to move to the ordinary queue)."""
        return max(0, self.rows - self.max_rows)

    async def overflow(self) -> tuple[list[int], list[bytes]]:
        """The oldest rows beyond ``max_rows`` that are in no batch: the caller appends them
        to the outbox, then :meth:`forget` s them (moved, not lost: only no longer first)."""
        excess = self.over
        if not excess:
            return [], []
        batched = set(self._batched)

        def look(db: sqlite3.Connection) -> list[tuple[int, bytes]]:
            rows = db.execute(
                "SELECT id, body FROM urgent ORDER BY id LIMIT ?", (excess + len(batched),)
            ).fetchall()
            return [(i, b) for i, b in rows if i not in batched][:excess]

        chosen = await self._file.read(look)
        return [i for i, _ in chosen], [b for _, b in chosen]

    async def forget(self, ids: Sequence[int]) -> None:
        """Delete rows moved elsewhere (see :meth:`overflow`)."""

        def delete(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM urgent WHERE id = ?", [(i,) for i in ids])

        await self._file.write(delete)
        self.rows -= len(ids)

    async def next_batch(self) -> UrgentBatch | None:
        """The oldest urgent rows in no batch yet, as a new batch (None when there are none)."""
        if self.rows <= len(self._batched):
            return None
        batched = set(self._batched)

        def take(db: sqlite3.Connection) -> list[tuple[int, int, bytes]]:
            rows = db.execute(
                "SELECT id, added_ms, body FROM urgent ORDER BY id LIMIT ?",
                (BATCH_MAX + len(batched),),
            ).fetchall()
            return [r for r in rows if r[0] not in batched][:BATCH_MAX]

        rows = await self._file.read(take)
        if not rows:
            return None
        batch = UrgentBatch(
            uuid.uuid4().hex, [r[0] for r in rows], [r[2] for r in rows], rows[0][1]
        )
        self._open[batch.batch_id] = batch
        self._batched.update(batch.ids)
        return batch

    def open_batches(self) -> list[UrgentBatch]:
        """Batches sent and not acknowledged, oldest first (to send again after a reconnect)."""
        return sorted(self._open.values(), key=lambda b: b.ids[0])

    def owns(self, batch_id: str) -> bool:
        return batch_id in self._open

    async def ack(self, batch_id: str) -> int:
        """The cloud committed the batch: delete its rows."""
        batch = self._open.pop(batch_id, None)
        if batch is None:
            return 0

        def delete(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM urgent WHERE id = ?", [(i,) for i in batch.ids])

        await self._file.write(delete)
        self._batched.difference_update(batch.ids)
        self.rows -= len(batch.ids)
        return len(batch.ids)


def _count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM urgent").fetchone()[0])
