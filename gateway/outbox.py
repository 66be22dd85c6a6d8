"""The outbox: readings stored on disk until the cloud acknowledged them.

SQLite in WAL mode with ``synchronous=FULL``, so a committed reading survives a power cut.
Every write goes through one writer thread (readers never block it); callers ``await`` the
coroutine methods, which run in that thread. Readings are appended in batches (group commit),
grouped into uplink batches whose id stays the same across retries (batches live in memory:
after a restart the unacknowledged rows are batched again), and deleted only when the cloud's
acknowledgement for their batch arrives.

Disk use is bounded by ``max_bytes`` and ``max_age`` with an explicit overflow policy:
``drop-oldest`` deletes the oldest rows to make room, ``refuse-new`` drops the new readings.
Every dropped row is counted by kind (reading or event) and reason (persisted, so counts
survive restarts). Rows already handed to the cloud (in a batch not yet acknowledged) are never
dropped to make room: they may be stored in the cloud already, and the window bounds them.

A full disk is not a failure of the outbox: a write that finds it full changes nothing, raises
:class:`~amcp.runtime.storage.StorageFullError` and sets :attr:`Outbox.full` until a write
succeeds again; ingest then waits (the broker keeps the readings) and tries again. Any other
failure of the file itself (an I/O error, a read-only or corrupt file) makes :meth:`Outbox.held`
raise: the child holding the outbox fails and its supervisor closes and opens this same object
again (the file is an :class:`~amcp.runtime.database.Database`, whose threads are made on open).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, TypeVar

import msgspec

from amcp.runtime.database import Database, Schema, SchemaTooNewError
from amcp.runtime.settings import Seconds
from amcp.runtime.storage import StorageFullError, transaction
from amcp.wire.telemetry import EventRecord, Reading

T = TypeVar("T")


class Overflow(enum.StrEnum):
    DROP_OLDEST = "drop-oldest"
    REFUSE_NEW = "refuse-new"


class OutboxSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[outbox]``: owned here, so the outbox imports no other part of the gateway."""

    max_bytes: Annotated[int, msgspec.Meta(gt=0)] = 512 * 1024 * 1024
    max_age: Seconds = 14 * 24 * 3600.0
    overflow: Overflow = Overflow.DROP_OLDEST


READING, EVENT = 0, 1  # outbox row kinds
KIND_NAMES = {READING: "reading", EVENT: "event"}


class OutboxError(Exception):
    """The outbox database cannot be used (newer schema, unreadable file)."""


class OutboxSchemaError(OutboxError, SchemaTooNewError):
    """The outbox file was written by a newer gateway."""


def _version_in_meta(version: int) -> Callable[[sqlite3.Connection], None]:
    """The version is also kept where gateways before ``user_version`` look for it, so they
    refuse a file this one upgraded instead of misreading it."""

    def record(db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))

    return record


_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    added_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS drops (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    device TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL
);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '1')
"""
"""The first outbox, as released (later steps change it; released steps never change)."""


def _v2(db: sqlite3.Connection) -> None:
    """Rows of two kinds: readings and gateway events."""
    if "kind" not in {r[1] for r in db.execute("PRAGMA table_info(outbox)")}:
        db.execute("ALTER TABLE outbox ADD COLUMN kind INTEGER NOT NULL DEFAULT 0")
    _version_in_meta(2)(db)


def _v3(db: sqlite3.Connection) -> None:
    """Batches moved to memory."""
    db.execute("DROP TABLE IF EXISTS batches")
    _version_in_meta(3)(db)


def _v4(db: sqlite3.Connection) -> None:
    """Drops counted by kind: the old counts were all taken as readings."""
    if "kind" not in {r[1] for r in db.execute("PRAGMA table_info(drops)")}:
        db.execute("ALTER TABLE drops RENAME TO drops_v3")
        db.execute(
            "CREATE TABLE drops (kind INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL, "
            "count INTEGER NOT NULL, PRIMARY KEY (kind, reason))"
        )
        db.execute("INSERT INTO drops SELECT 0, reason, count FROM drops_v3")
        db.execute("DROP TABLE drops_v3")
    _version_in_meta(4)(db)


def _v5(db: sqlite3.Connection) -> None:
    """The reading identities of the last commits (redeliveries after a crash)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS recent_commits (id INTEGER PRIMARY KEY, ids BLOB NOT NULL)"
    )
    _version_in_meta(5)(db)


def _legacy_version(db: sqlite3.Connection) -> int:
    """Outboxes before ``user_version`` kept their version in ``meta`` (0: a new file)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return 0 if row is None else int(row[0])


SCHEMA = Schema(
    "outbox", (_V1, _v2, _v3, _v4, _v5), legacy_version=_legacy_version, too_new=OutboxSchemaError
)
"""Numbered steps, forward only (see :class:`~amcp.runtime.database.Schema`)."""
SCHEMA_VERSION = SCHEMA.version


@dataclass(frozen=True)
class Batch:
    batch_id: str
    first_id: int
    last_id: int
    bodies: list[bytes]
    """Encoded readings."""
    oldest_ms: int
    events: list[bytes] = field(default_factory=list)
    """Encoded event records."""

    @property
    def empty(self) -> bool:
        return not self.bodies and not self.events


@dataclass
class OutboxStats:
    rows: int = 0
    bytes: int = 0
    oldest_ms: int | None = None
    open_batches: int = 0
    full: bool = False
    """The last write found the disk full (cleared by the next write that succeeds)."""


_encoder = msgspec.msgpack.Encoder()
encode_row = _encoder.encode
"""How a reading or event is stored (and sent: the uplink forwards the stored bytes)."""

Identity = tuple[str, str, int]
"""A reading's (device, boot, seq)."""
_Row = tuple[int, int, bytes, int, int]
"""added_ms, size, body, kind, and the row's index in its append."""
RECENT_COMMITS = 16
"""Commits whose reading identities are kept for recognising redeliveries after a crash (the
broker redelivers only what was not acknowledged: at most the last few commits)."""

OnDrop = Callable[[str, str, int], None]
"""``(kind, reason, rows)``: kind is ``reading`` or ``event``."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Source(msgspec.Struct):
    device: str = ""
    source: str = ""


_source_decoder = msgspec.msgpack.Decoder(_Source)


def _row_source(body: bytes) -> str:
    """The device (reading) or source (event) a stored row is about, for a dead letter."""
    try:
        row = _source_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return "?"
    return row.device or row.source or "?"


class Outbox:
    def __init__(
        self,
        path: Path,
        settings: OutboxSettings,
        *,
        on_drop: OnDrop | None = None,
        dead_letter_max_rows: int = 10_000,
        now_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.path = path
        self.settings = settings
        self._on_drop = on_drop
        self._dead_letter_max = dead_letter_max_rows
        self._now_ms = now_ms
        self._file = Database(
            path, name="outbox", schema=SCHEMA, synchronous="FULL", setup=self._open
        )
        self._commits: deque[tuple[Identity, ...]] = deque(maxlen=RECENT_COMMITS)
        """Identities of the last commits, this run's and (after a restart) the last run's
        (see :meth:`append_readings`)."""
        self._cursor = 0  # rows with id > cursor are not in any batch
        self._last_id = 0  # the newest row's id
        self._unacked: dict[str, Batch] = {}
        self.stats = OutboxStats()
        self._lock = threading.Lock()  # guards stats read by the metrics thread
        self.appended = asyncio.Event()

    def depth(self) -> int:
        """Readings waiting (an S2 load signal)."""
        return self.stats.rows

    @property
    def full(self) -> bool:
        return self.stats.full

    def _set_full(self, *, full: bool) -> None:
        if self.stats.full != full:
            with self._lock:
                self.stats.full = full

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        """Open (or open again after :meth:`close`: a supervisor restarts the same object)."""
        await self._file.open()

    async def close(self) -> None:
        await self._file.close()

    async def _run(self, fn: Callable[[], T]) -> T:
        return await self._file.call(lambda _conn: fn())

    async def held(self) -> None:
        """Return never; raise once the outbox's database failed (not for a full disk, which
        is waited out), so the child holding it fails and its supervisor reopens the file and
        restarts what depends on it."""
        await self._file.held()

    def _open(self, db: sqlite3.Connection) -> None:
        """The in-memory state from the file (migrated already), on the writer thread."""
        self._cursor = 0
        self._commits.clear()
        self._commits.extend(
            tuple((str(d), str(b), int(q)) for d, b, q in msgspec.msgpack.decode(blob))
            for (blob,) in db.execute("SELECT ids FROM recent_commits ORDER BY id")
        )
        self._last_id = db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
        self._unacked.clear()
        rows, size, oldest = db.execute(
            "SELECT count(*), coalesce(sum(size), 0), min(added_ms) FROM outbox"
        ).fetchone()
        with self._lock:
            self.stats = OutboxStats(rows, size, oldest, 0)

    @property
    def db(self) -> sqlite3.Connection:
        """The writer thread's connection (for code running there, and tests)."""
        if not self._file.is_open:
            raise OutboxError("outbox is not open")
        return self._file.connection

    # -- appending ----------------------------------------------------------------------
    async def append(self, readings: Sequence[Reading]) -> int:
        """Store readings durably; returns how many were stored (the rest were dropped)."""
        return await self.append_encoded([encode_row(r) for r in readings], READING)

    async def append_events(self, events: Sequence[EventRecord]) -> int:
        """Store events durably, like readings (same cap, same batches to the cloud)."""
        return await self.append_encoded([encode_row(e) for e in events], EVENT)

    async def append_encoded(self, bodies: Sequence[bytes], kind: int = READING) -> int:
        """Store rows already encoded with :data:`encode_row`; returns how many were stored.
        Raises :class:`~amcp.runtime.storage.StorageFullError` when the disk is full
        (nothing is stored then)."""
        return len(await self.append_readings(bodies, kind=kind))

    async def append_readings(
        self,
        bodies: Sequence[bytes],
        identities: Sequence[Identity] = (),
        *,
        kind: int = READING,
    ) -> list[int]:
        """:meth:`append_encoded` for ingest: returns the indices of the rows stored (the
        overflow policy may refuse some), and records ``identities`` (device, boot, seq) in
        the same transaction, so that after a crash or a lost connection
        :meth:`recent_identities` tells which readings a broker redelivers were committed
        already."""
        if not bodies:
            return []
        kept = await self._run(lambda: self._append(bodies, kind, identities))
        if kept:
            self.appended.set()
        return kept

    def _append(
        self, bodies: Sequence[bytes], kind: int, identities: Sequence[Identity] = ()
    ) -> list[int]:
        now = self._now_ms()
        rows: list[_Row] = [(now, len(b), b, kind, i) for i, b in enumerate(bodies)]
        incoming = sum(r[1] for r in rows)
        db = self.db
        dropped: dict[tuple[int, str], int] = {}
        cursor = self._cursor
        try:
            with transaction(db):
                over = self.stats.bytes + incoming - self.settings.max_bytes
                if over > 0:
                    rows = self._make_room(rows, over, kind, dropped)
                db.executemany(
                    "INSERT INTO outbox (added_ms, size, body, kind) VALUES (?, ?, ?, ?)",
                    [r[:4] for r in rows],
                )
                self._count_drops(dropped)
                if identities:
                    self._remember(db, identities)
            if rows:
                self._last_id = db.execute("SELECT last_insert_rowid()").fetchone()[0]
            if identities:
                self._commits.append(tuple(identities))
        except BaseException as exc:
            self._cursor = cursor  # nothing was dropped after all
            with contextlib.suppress(sqlite3.Error):  # a failed file is reopened, stats too
                self._reload_stats()
            self._set_full(full=isinstance(exc, StorageFullError))
            raise
        with self._lock:
            self.stats.full = False
            self.stats.rows += len(rows)
            self.stats.bytes += sum(r[1] for r in rows)
            if self.stats.oldest_ms is None and rows:
                self.stats.oldest_ms = now
        self._notify_drops(dropped)
        return [r[4] for r in rows]

    def recent_identities(self) -> set[Identity]:
        """(device, boot, seq) of the readings of the last :data:`RECENT_COMMITS` commits:
        what a broker may deliver again whose acknowledgement was lost (with the process, or
        with the connection)."""
        return {identity for commit in list(self._commits) for identity in commit}

    def _remember(self, db: sqlite3.Connection, identities: Sequence[Identity]) -> None:
        """Keep the identities of the last :data:`RECENT_COMMITS` commits (one row each)."""
        cur = db.execute(
            "INSERT INTO recent_commits (ids) VALUES (?)", (_encoder.encode(list(identities)),)
        )
        db.execute(
            "DELETE FROM recent_commits WHERE id <= ?", ((cur.lastrowid or 0) - RECENT_COMMITS,)
        )

    def _make_room(
        self,
        rows: list[_Row],
        over: int,
        kind: int,
        dropped: dict[tuple[int, str], int],
    ) -> list[_Row]:
        """Apply the overflow policy to ``over`` bytes too many; returns the rows to insert."""
        if self.settings.overflow is Overflow.DROP_OLDEST:
            freed = self._drop_oldest(over, dropped)
            if freed < over:
                # rows in flight to the cloud stay, so what is left of the cap takes the
                # newest of the incoming rows: the oldest of them go
                room = self.settings.max_bytes - self.stats.bytes
                kept, older = self._fit(rows[::-1], room)
                if older:
                    key = (kind, "overflow_oldest")
                    dropped[key] = dropped.get(key, 0) + older
                return kept[::-1]
            return rows
        kept, refused = self._fit(rows, self.settings.max_bytes - self.stats.bytes)
        if refused:
            dropped[kind, "overflow_new"] = refused
        return kept

    @staticmethod
    def _fit(rows: list[_Row], room: int) -> tuple[list[_Row], int]:
        kept: list[_Row] = []
        for row in rows:
            if row[1] > room:
                break
            room -= row[1]
            kept.append(row)
        return kept, len(rows) - len(kept)

    def _drop_oldest(self, need: int, dropped: dict[tuple[int, str], int]) -> int:
        """Delete the oldest rows not in flight until ``need`` bytes are free; returns the
        bytes freed and adds the rows dropped, by kind, to ``dropped``."""
        db = self.db
        n = freed = 0
        last_id = self._cursor
        first_id = self._cursor + 1
        by_kind: dict[int, int] = {}
        while freed < need:
            chunk = db.execute(
                "SELECT id, size, kind FROM outbox WHERE id > ? ORDER BY id LIMIT 500", (last_id,)
            ).fetchall()
            if not chunk:
                break
            for row_id, size, kind in chunk:
                last_id = row_id
                n += 1
                freed += size
                by_kind[kind] = by_kind.get(kind, 0) + 1
                if freed >= need:
                    break
        if n:
            db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (first_id, last_id))
            self._cursor = last_id  # what is left in no batch starts after the dropped rows
            for kind, count in by_kind.items():
                key = (kind, "overflow_oldest")
                dropped[key] = dropped.get(key, 0) + count
            with self._lock:
                self.stats.rows -= n
                self.stats.bytes -= freed
                self.stats.oldest_ms = None if self.stats.rows == 0 else self.stats.oldest_ms
        return freed

    def _count_drops(self, dropped: dict[tuple[int, str], int]) -> None:
        self.db.executemany(
            "INSERT INTO drops VALUES (?, ?, ?) "
            "ON CONFLICT(kind, reason) DO UPDATE SET count = count + excluded.count",
            [(kind, reason, n) for (kind, reason), n in dropped.items()],
        )

    def _notify_drops(self, dropped: dict[tuple[int, str], int]) -> None:
        if self._on_drop is not None:
            for (kind, reason), n in dropped.items():
                self._on_drop(KIND_NAMES[kind], reason, n)

    def _reload_stats(self) -> None:
        rows, size, oldest = self.db.execute(
            "SELECT count(*), coalesce(sum(size), 0), min(added_ms) FROM outbox"
        ).fetchone()
        with self._lock:
            self.stats.rows, self.stats.bytes, self.stats.oldest_ms = rows, size, oldest

    async def expire(self) -> int:
        """Drop rows older than ``max_age``; returns how many."""
        return await self._run(self._expire)

    def _expire(self) -> int:
        cutoff = self._now_ms() - int(self.settings.max_age * 1000)
        db = self.db
        dropped: dict[tuple[int, str], int] = {}
        with transaction(db):
            for kind, count in db.execute(
                "SELECT kind, count(*) FROM outbox WHERE added_ms < ? GROUP BY kind", (cutoff,)
            ).fetchall():
                dropped[kind, "expired"] = count
            if dropped:
                db.execute("DELETE FROM outbox WHERE added_ms < ?", (cutoff,))
                self._count_drops(dropped)
        if dropped:
            self._reload_stats()
            self._notify_drops(dropped)
        return sum(dropped.values())

    # -- batches ------------------------------------------------------------------------
    # Batches live in memory: forming one writes nothing (no fsync per batch). After a restart
    # every unacknowledged row is simply batched again under a new id; the cloud drops the
    # readings it already has by their identity (device, boot, seq).
    async def next_batch(self, max_rows: int) -> Batch | None:
        """Group the oldest rows not yet in a batch into a new batch, or None if none."""
        return await self._run(lambda: self._next_batch(max_rows))

    async def next_batches(self, max_rows: int, count: int) -> list[Batch]:
        """Up to ``count`` new batches at once (one trip to the writer thread)."""

        def take() -> list[Batch]:
            batches: list[Batch] = []
            while len(batches) < count and (batch := self._next_batch(max_rows)) is not None:
                batches.append(batch)
            return batches

        return await self._run(take)

    @property
    def unbatched(self) -> int:
        """About how many rows are in no batch yet (never fewer; rows dropped by the overflow
        policy may still be counted)."""
        return self._last_id - self._cursor

    def _next_batch(self, max_rows: int) -> Batch | None:
        rows = self.db.execute(
            "SELECT id, added_ms, body, kind FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (self._cursor, max_rows),
        ).fetchall()
        if not rows:
            return None
        batch = Batch(
            batch_id=uuid.uuid4().hex,
            first_id=rows[0][0],
            last_id=rows[-1][0],
            bodies=[r[2] for r in rows if r[3] == READING],
            oldest_ms=rows[0][1],
            events=[r[2] for r in rows if r[3] == EVENT],
        )
        self._cursor = batch.last_id
        self._unacked[batch.batch_id] = batch
        with self._lock:
            self.stats.open_batches = len(self._unacked)
        return batch

    async def open_batches(self) -> list[Batch]:
        """Batches sent before but not acknowledged, oldest first (to send again)."""
        return await self._run(lambda: sorted(self._unacked.values(), key=lambda b: b.first_id))

    async def ack(
        self,
        batch_id: str,
        refused: dict[int, str] | None = None,
        refused_events: dict[int, str] | None = None,
    ) -> int:
        """The cloud committed this batch: delete its rows. Unknown ids are ignored. Rows the
        cloud could not store (``refused``: index in the batch's readings → reason, likewise
        for events) move to the dead-letter table instead of vanishing."""
        return await self._run(lambda: self._ack(batch_id, refused, refused_events))

    async def refuse(self, batch_id: str, reason: str) -> int:
        """The cloud can never store this batch: every row moves to the dead-letter table."""
        batch = self._unacked.get(batch_id)
        if batch is None:
            return 0
        return await self.ack(
            batch_id,
            dict.fromkeys(range(len(batch.bodies)), reason),
            dict.fromkeys(range(len(batch.events)), reason),
        )

    def _dead_rows(
        self, batch: Batch, refused: dict[int, str] | None, refused_events: dict[int, str] | None
    ) -> list[tuple[str, str, str, bytes]]:
        entries = []
        for bodies, which in ((batch.bodies, refused), (batch.events, refused_events)):
            for index, why in (which or {}).items():
                if 0 <= index < len(bodies):
                    body = bodies[index]
                    entries.append((_row_source(body), "cloud_refused", str(why)[:500], body))
        return entries

    def _ack(
        self,
        batch_id: str,
        refused: dict[int, str] | None = None,
        refused_events: dict[int, str] | None = None,
    ) -> int:
        batch = self._unacked.get(batch_id)
        if batch is None:
            return 0
        if refused or refused_events:
            self._dead_letter(self._dead_rows(batch, refused, refused_events))
        db = self.db
        span = (batch.first_id, batch.last_id)
        # A deletion need not reach the disk before we go on: lost in a power cut, the rows
        # are sent again and the cloud drops them as duplicates. The next append's fsync
        # makes it durable anyway (the WAL is written in order).
        db.execute("PRAGMA synchronous=OFF")
        try:
            with transaction(db):
                n, size = db.execute(
                    "SELECT count(*), coalesce(sum(size), 0) FROM outbox WHERE id BETWEEN ? AND ?",
                    span,
                ).fetchone()
                db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", span)
        finally:
            db.execute("PRAGMA synchronous=FULL")
        # forgotten only once deleted: a failed deletion (a full disk) leaves the batch open,
        # so it is sent again and its next ack deletes it
        del self._unacked[batch_id]
        oldest = None
        if self.stats.rows - n > 0:
            oldest = db.execute("SELECT added_ms FROM outbox ORDER BY id LIMIT 1").fetchone()
        with self._lock:
            self.stats.rows -= n
            self.stats.bytes -= size
            self.stats.open_batches = len(self._unacked)
            self.stats.oldest_ms = oldest[0] if oldest else None
        return int(n)

    # -- dead letters and counters ------------------------------------------------------
    async def dead_letter(self, entries: Sequence[tuple[str, str, str, bytes]]) -> None:
        """Keep refused payloads (device, reason, detail, payload) in a bounded table."""
        if entries:
            await self._run(lambda: self._dead_letter(entries))

    def _dead_letter(self, entries: Sequence[tuple[str, str, str, bytes]]) -> None:
        now = self._now_ms()
        db = self.db
        try:
            with transaction(db):
                db.executemany(
                    "INSERT INTO dead_letters (at_ms, device, reason, detail, payload) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(now, d, r, detail[:500], p[:4096]) for d, r, detail, p in entries],
                )
                db.execute(
                    "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?",
                    (self._dead_letter_max,),
                )
        except StorageFullError:
            self._set_full(full=True)
            raise

    async def dead_letters(self, limit: int = 100) -> list[tuple[str, str, str]]:
        return await self._run(
            lambda: self.db.execute(
                "SELECT device, reason, detail FROM dead_letters ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )

    async def drop_counts(self, kind: int = READING) -> dict[str, int]:
        """Rows of ``kind`` dropped so far (this file's whole life), by reason."""
        return await self._run(
            lambda: dict(self.db.execute("SELECT reason, count FROM drops WHERE kind = ?", (kind,)))
        )

    def snapshot(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(**vars(self.stats))
