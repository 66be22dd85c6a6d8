"""The cloud's reading store: SQLite, one row per reading, duplicates dropped by identity.

Identity is (device, boot, seq) — see docs/telemetry.md. A batch is committed in one
transaction with ``synchronous=FULL`` before its acknowledgement is sent, so an acknowledged
reading is on disk. One writer thread; reads open their own connections.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import msgspec

from amcp.wire.telemetry import EventRecord, Reading

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    device TEXT NOT NULL,
    boot TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    stored_ms INTEGER NOT NULL,
    gateway TEXT NOT NULL,
    "values" TEXT NOT NULL,
    PRIMARY KEY (device, boot, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    gateway TEXT NOT NULL,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    severity TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    stored_ms INTEGER NOT NULL,
    attrs TEXT NOT NULL
);
"""


_encode_json = msgspec.json.Encoder().encode


def _json(value: object) -> str:
    """JSON text for a values column (msgspec: several times faster than the json module)."""
    return _encode_json(value).decode()


class StoreBatch(NamedTuple):
    """One gateway batch's content, as :meth:`ReadingStore.store_many` takes it."""

    gateway: str
    readings: Sequence[Reading]
    events: Sequence[EventRecord]


class ReadingStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readings-writer")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    async def store(
        self,
        gateway: str,
        readings: Sequence[Reading],
        events: Sequence[EventRecord],
        now_ms: int,
    ) -> tuple[int, int]:
        """Commit a batch; returns (readings stored, duplicate readings dropped).

        Events carry no identity of their own: a re-sent batch may store an event twice
        (at-least-once), which shows as a repeat, never as a loss.
        """
        return (await self.store_many([StoreBatch(gateway, readings, events)], now_ms))[0]

    async def store_many(self, batches: Sequence[StoreBatch], now_ms: int) -> list[tuple[int, int]]:
        """Commit several batches in one transaction (one fsync: group commit); returns
        (stored, duplicates) for each, in order. A reading repeated in a later batch of the
        same call counts as that batch's duplicate."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._store_many, batches, now_ms
        )

    def _store_many(self, batches: Sequence[StoreBatch], now_ms: int) -> list[tuple[int, int]]:
        assert self._db is not None
        db = self._db
        results: list[tuple[int, int]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for gateway, readings, events in batches:
                rows = [
                    (
                        r.device,
                        r.boot,
                        r.seq,
                        r.ts_ms,
                        r.received_ms,
                        now_ms,
                        gateway,
                        _json(r.values),
                    )
                    for r in readings
                ]
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
                stored = db.total_changes - before
                results.append((stored, len(rows) - stored))
                db.executemany(
                    "INSERT INTO events (gateway, name, source, severity, ts_ms, stored_ms, attrs) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (gateway, e.name, e.source, e.severity, e.ts_ms, now_ms, _json(e.attrs))
                        for e in events
                    ],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return results


def count_readings(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])
