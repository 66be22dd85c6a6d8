"""The cloud's reading store: one row per reading, duplicates dropped by identity, on either engine.

Identity is (device, boot, seq) — see docs/telemetry.md. A batch is committed in one
transaction before its acknowledgement is sent, so an acknowledged reading is stored (SQLite:
``synchronous=FULL``; PostgreSQL: the server's commit). The same transaction claims the batch's
envelope in the nonce registry (a second cloud worker that receives the same envelope finds it
claimed: a replay), keeps each gateway's and device's latest row, and marks the minutes it
touched for the rollups (cloud.storage.upkeep). The store is written against the storage seam
(:class:`~cloud.storage.engine.Engine`), so SQLite and PostgreSQL run the same code.

Tools and tests read a SQLite store file directly, read-only, through the functions at the end
(:func:`count_readings`, :func:`reading_keys`, :func:`recorded_readings`): no SQL of this
table outside this module and cloud.storage.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

import msgspec

from amcp.runtime.database import connect
from amcp.wire.telemetry import (
    EventRecord,
    InvalidValueError,
    Reading,
    check_event,
    check_reading,
)
from cloud import causality
from cloud.storage.engine import Engine, Tx
from cloud.storage.sqlite import SqliteEngine

T = TypeVar("T")
MINUTE_MS = 60_000

_encode_json = msgspec.json.Encoder().encode


def _json(value: object) -> str:
    """JSON text for a values column (msgspec: several times faster than the json module)."""
    return _encode_json(value).decode()


class Claim(NamedTuple):
    """A batch's envelope, claimed in the nonce registry by the transaction that stores it."""

    sender: str
    """The key id that signed it."""
    nonce: bytes
    ts_ms: int


class StoreBatch(NamedTuple):
    """One gateway batch's content, as :meth:`ReadingStore.store_many` takes it."""

    gateway: str
    readings: Sequence[Reading]
    events: Sequence[EventRecord]
    claim: Claim | None = None


class ReadingStore:
    def __init__(self, target: Path | Engine) -> None:
        """``target``: a SQLite file (the default engine) or an open-able engine."""
        self.engine: Engine = SqliteEngine(target) if isinstance(target, Path) else target
        self.path = target if isinstance(target, Path) else None

    async def open(self) -> None:
        """Open (or open again after :meth:`close`: a supervisor restarts the same object)."""
        await self.engine.open()

    async def close(self) -> None:
        await self.engine.close()

    async def held(self) -> None:
        """Return never; raise once the database failed (the holding child then fails and
        its supervisor reopens the store)."""
        await self.engine.held()

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
        out and reported by index; the rest of their batch is stored. A batch whose claim is
        already in the nonce registry stores nothing (``replayed``). A full disk raises
        :class:`~amcp.runtime.storage.StorageFullError` and stores nothing."""
        return await self.engine.write(lambda tx: _store_many(tx, batches, now_ms))

    async def count(self) -> int:
        """Readings stored (on a reader, beside the writes)."""
        return await self.engine.read(_count)


_READING_COLUMNS = (
    "device",
    "boot",
    "seq",
    "ts_ms",
    "received_ms",
    "stored_ms",
    "gateway",
    "values",
)


def _insert_readings(tx: Tx, rows: list[tuple[object, ...]]) -> int:
    return tx.insert_new("readings", _READING_COLUMNS, rows)


_INSERT_EVENT = (
    "INSERT INTO events (gateway, name, source, severity, ts_ms, stored_ms, attrs) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_CLAIM = "INSERT INTO nonce_registry (sender, nonce, ts_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
_LATEST = (
    'INSERT INTO devices (device, gateway, boot, seq, ts_ms, "values", first_seen_ms) '
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET "
    "gateway = excluded.gateway, boot = excluded.boot, seq = excluded.seq, "
    'ts_ms = excluded.ts_ms, "values" = excluded."values" '
    "WHERE excluded.ts_ms >= devices.ts_ms"
)
_GATEWAY = (
    "INSERT INTO gateways (id, first_seen_ms, last_batch_ms, batches, readings) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
    "last_batch_ms = excluded.last_batch_ms, batches = gateways.batches + excluded.batches, "
    "readings = gateways.readings + excluded.readings"
)
MARK_MINUTE = (
    "INSERT INTO rollup_pending (device, bucket_ms) VALUES (?, ?) "
    "ON CONFLICT (device, bucket_ms) DO UPDATE SET bucket_ms = excluded.bucket_ms"
)
"""A no-op update rather than DO NOTHING: it locks the mark, so a rollup claiming it waits for
this transaction's readings (cloud.storage.upkeep)."""


def _store_many(tx: Tx, batches: Sequence[StoreBatch], now_ms: int) -> list[Stored]:
    """One :meth:`ReadingStore.store_many`, inside the engine's write transaction."""
    results: list[Stored] = []
    latest: dict[str, tuple[object, ...]] = {}
    minutes: set[tuple[str, int]] = set()
    gateways: dict[str, list[int]] = {}
    for gateway, readings, events, claim in batches:
        if claim is not None and not tx.executemany(_CLAIM, [claim]):
            results.append(Stored(0, 0, {}, {}, 0, replayed=True))
            continue
        row = functools.partial(_reading_row, gateway, now_ms)
        rows, refused = _storable(readings, check_reading, row)
        stored = _insert_readings(tx, rows)
        event_row = functools.partial(_event_row, gateway, now_ms)
        event_rows, refused_events = _storable(events, check_event, event_row)
        tx.executemany(_INSERT_EVENT, event_rows)
        traced = [e for i, e in enumerate(events) if i not in refused_events]
        causality.write(tx, *causality.event_rows(gateway, _traced(traced), now_ms))
        audit_rows = [_audit_row(gateway, e, now_ms) for e in events if e.name == AUDIT_ENTRY]
        tx.insert_new("audit_inbox", _AUDIT_COLUMNS, [r for r in audit_rows if r is not None])
        results.append(Stored(stored, len(rows) - stored, refused, refused_events, len(event_rows)))
        for r in rows:
            device, boot, seq, ts_ms = r[0], r[1], r[2], r[3]
            assert isinstance(device, str)
            assert isinstance(ts_ms, int)
            minutes.add((device, ts_ms - ts_ms % MINUTE_MS))
            known = latest.get(device)
            if known is None or (ts_ms, seq) >= (known[4], known[3]):
                latest[device] = (device, gateway, boot, seq, ts_ms, r[7], now_ms)
        seen = gateways.setdefault(gateway, [0, 0])
        seen[0] += 1
        seen[1] += stored
    # in key order: two workers' transactions lock the same rows in the same order (no deadlock)
    tx.executemany(_LATEST, [latest[d] for d in sorted(latest)])
    tx.executemany(MARK_MINUTE, sorted(minutes))
    tx.executemany(
        _GATEWAY, [(g, now_ms, now_ms, n, stored) for g, (n, stored) in sorted(gateways.items())]
    )
    return results


def _traced(events: Sequence[EventRecord]) -> list[EventRecord]:
    """The events the causality graph holds: all but audit entries (copies of events)."""
    return [e for e in events if e.name != AUDIT_ENTRY]


AUDIT_ENTRY = "audit.entry"
"""Gateway audit entries travel up as events of this name (gateway.audit); each also goes to
the audit inbox, from which the cloud's audit log takes it (cloud.audit)."""
_AUDIT_COLUMNS = ("source", "seq", "entry", "payload", "received_ms")


def _audit_row(gateway: str, e: EventRecord, now_ms: int) -> tuple[object, ...] | None:
    """An inbox row for an ``audit.entry`` event (None when it is not shaped like one: the
    event itself is kept, and the audit log finds the gap)."""
    seq, entry, payload = e.attrs.get("seq"), e.attrs.get("entry"), e.attrs.get("payload", {})
    if not isinstance(seq, int) or not isinstance(entry, str):
        return None
    try:
        raw = base64.b64decode(entry, validate=True)
    except ValueError:
        return None
    return (gateway, seq, raw, _json(payload), now_ms)


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
    replayed: bool = False
    """The batch's envelope was already claimed (by this worker or another): nothing stored."""


def _count(tx: Tx) -> int:
    return int(tx.execute("SELECT count(*) FROM readings")[0][0])


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
        return 0 if db is None else int(db.execute("SELECT count(*) FROM readings").fetchone()[0])


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
