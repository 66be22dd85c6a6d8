"""The cloud's reading store: SQLite, one row per reading, duplicates dropped by identity.

Identity is (device, boot, seq) — see docs/telemetry.md. A batch is committed in one
transaction with ``synchronous=FULL`` before its acknowledgement is sent, so an acknowledged
reading is on disk. The file is an :class:`~amcp.runtime.database.Database` (one writer thread,
a read-only reader beside it, made on open so a supervisor reopens the same store); the store
uses only its :class:`~amcp.runtime.database.AsyncDatabase` face (``write``/``read``), the seam
a PostgreSQL backend for the cloud would stand behind.

Tools and tests read a store file directly, read-only, through the functions at the end
(:func:`count_readings`, :func:`reading_keys`, :func:`recorded_readings`): no SQL of this
table outside this module.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

import msgspec

from amcp.runtime.database import AsyncDatabase, Database, Schema, connect
from amcp.wire.telemetry import (
    EventRecord,
    InvalidValueError,
    Reading,
    check_event,
    check_reading,
)

T = TypeVar("T")

_V1 = """
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
SCHEMA = Schema("readings", (_V1,))
"""Numbered steps, forward only (files from before ``user_version`` are at 0: step 1 creates
nothing they have)."""


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
        self._file: AsyncDatabase[sqlite3.Connection] = Database(
            path, name="readings", schema=SCHEMA, synchronous="FULL"
        )

    async def open(self) -> None:
        """Open (or open again after :meth:`close`: a supervisor restarts the same object)."""
        await self._file.open()

    async def close(self) -> None:
        await self._file.close()

    async def held(self) -> None:
        """Return never; raise once the database failed (the holding child then fails and
        its supervisor reopens the store)."""
        await self._file.held()

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
        result = (await self.store_many([StoreBatch(gateway, readings, events)], now_ms))[0]
        return result.stored, result.duplicates

    async def store_many(self, batches: Sequence[StoreBatch], now_ms: int) -> list[Stored]:
        """Commit several batches in one transaction (one fsync: group commit); returns what
        became of each, in order. A reading repeated in a later batch of the same call counts
        as that batch's duplicate. Readings and events that cannot be stored (values beyond
        what the store represents, see :func:`~amcp.wire.telemetry.check_reading`) are left
        out and reported by index; the rest of their batch is stored. A full disk raises
        :class:`~amcp.runtime.storage.StorageFullError` and stores nothing."""
        return await self._file.write(lambda db: _store_many(db, batches, now_ms))

    async def count(self) -> int:
        """Readings stored (on the reader, beside the writes)."""
        return await self._file.read(_count)


def _store_many(db: sqlite3.Connection, batches: Sequence[StoreBatch], now_ms: int) -> list[Stored]:
    """One :meth:`ReadingStore.store_many`, in the write transaction ``Database.write`` runs."""
    results: list[Stored] = []
    for gateway, readings, events in batches:
        row = functools.partial(_reading_row, gateway, now_ms)
        rows, refused = _storable(readings, check_reading, row)
        before = db.total_changes
        db.executemany("INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        stored = db.total_changes - before
        event_row = functools.partial(_event_row, gateway, now_ms)
        event_rows, refused_events = _storable(events, check_event, event_row)
        db.executemany(
            "INSERT INTO events (gateway, name, source, severity, ts_ms, stored_ms, attrs) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            event_rows,
        )
        results.append(Stored(stored, len(rows) - stored, refused, refused_events, len(event_rows)))
    return results


def _reading_row(gateway: str, now_ms: int, r: Reading) -> tuple[object, ...]:
    return (r.device, r.boot, r.seq, r.ts_ms, r.received_ms, now_ms, gateway, _json(r.values))


def _event_row(gateway: str, now_ms: int, e: EventRecord) -> tuple[object, ...]:
    return (gateway, e.name, e.source, e.severity, e.ts_ms, now_ms, _json(e.attrs))


def _storable(
    items: Sequence[T], check: Callable[[T], None], row: Callable[[T], tuple[object, ...]]
) -> tuple[list[tuple[object, ...]], dict[int, str]]:
    """The rows of the items the store can hold, and the others' reasons by index."""
    rows: list[tuple[object, ...]] = []
    refused: dict[int, str] = {}
    for i, item in enumerate(items):
        try:
            check(item)
            rows.append(row(item))
        except (InvalidValueError, TypeError, ValueError, OverflowError) as exc:
            refused[i] = f"{type(exc).__name__}: {exc}"[:300]
    return rows, refused


class Stored(NamedTuple):
    """What :meth:`ReadingStore.store_many` did with one batch."""

    stored: int
    duplicates: int
    refused: dict[int, str]
    """Readings left out, by index in the batch, with the reason."""
    refused_events: dict[int, str]
    events: int
    """Events stored."""


def _count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to a store file, or None when it holds no store (yet)."""
    if not path.exists():
        yield None
        return
    with contextlib.closing(connect(path, readonly=True)) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'readings'").fetchone() is None:
            yield None
        else:
            yield db


def count_readings(path: Path) -> int:
    """Readings in a store file (another process's, read-only); 0 before it has any table."""
    with _reading(path) as db:
        return 0 if db is None else _count(db)


def reading_keys(path: Path) -> list[tuple[str, str, int]]:
    """Every stored reading's identity (device, boot, seq), in no particular order."""
    with _reading(path) as db:
        return [] if db is None else db.execute("SELECT device, boot, seq FROM readings").fetchall()


def last_stored_ms(path: Path) -> int:
    """When the newest reading was stored (epoch ms), 0 before any."""
    with _reading(path) as db:
        if db is None:
            return 0
        return int(db.execute("SELECT coalesce(max(stored_ms), 0) FROM readings").fetchone()[0])


def storage_delays_ms(path: Path, boot: str) -> list[int]:
    """``stored_ms - ts_ms`` of every reading of ``boot``: device-to-cloud-store latency."""
    with _reading(path) as db:
        if db is None:
            return []
        rows = db.execute("SELECT stored_ms - ts_ms FROM readings WHERE boot = ?", (boot,))
        return [int(d) for (d,) in rows]


def recorded_readings(path: Path) -> Iterator[Reading]:
    """The readings of a store file, oldest first (``cybernetic patterns test`` replays them)."""
    with _reading(path) as db:
        if db is None:
            return
        rows = db.execute(
            'SELECT device, boot, seq, ts_ms, "values" FROM readings ORDER BY ts_ms, seq'
        )
        for device, boot, seq, ts_ms, values in rows:
            yield Reading(device, boot, seq, ts_ms, json.loads(values))
