"""The outbox: readings stored on disk until the cloud acknowledged them.

SQLite in WAL mode with ``synchronous=FULL``, so a committed reading survives a power cut.
Every write goes through one writer thread (readers never block it); callers ``await`` the
coroutine methods, which run in that thread. Readings are appended in batches (group commit),
grouped into uplink batches whose id stays the same across retries (batches live in memory:
after a restart the unacknowledged rows are batched again), and deleted only when the cloud's
acknowledgement for their batch arrives.

Disk use is bounded by ``max_bytes`` and ``max_age`` with an explicit overflow policy:
``drop-oldest`` deletes the oldest rows to make room, ``refuse-new`` drops the new readings.
Every dropped row is counted by reason (persisted, so counts survive restarts).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec

from amcp.wire.telemetry import EventRecord, Reading
from gateway.config import OutboxSettings, Overflow

T = TypeVar("T")
SCHEMA_VERSION = 3
READING, EVENT = 0, 1  # outbox row kinds

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    added_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL,
    kind INTEGER NOT NULL DEFAULT 0
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
"""


class OutboxError(Exception):
    """The outbox database cannot be used (newer schema, unreadable file)."""


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


_encoder = msgspec.msgpack.Encoder()


def _now_ms() -> int:
    return int(time.time() * 1000)


class Outbox:
    def __init__(
        self,
        path: Path,
        settings: OutboxSettings,
        *,
        on_drop: Callable[[str, int], None] | None = None,
        dead_letter_max_rows: int = 10_000,
        now_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.path = path
        self.settings = settings
        self._on_drop = on_drop
        self._dead_letter_max = dead_letter_max_rows
        self._now_ms = now_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-writer")
        self._db: sqlite3.Connection | None = None
        self._cursor = 0  # rows with id > cursor are not in any batch
        self._last_id = 0  # the newest row's id
        self._unacked: dict[str, Batch] = {}
        self.stats = OutboxStats()
        self._lock = threading.Lock()  # guards stats read by the metrics thread
        self.appended = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) < SCHEMA_VERSION:
            self._migrate(db, int(row[0]))
        elif int(row[0]) > SCHEMA_VERSION:
            db.close()
            raise OutboxError(
                f"{self.path}: outbox schema {row[0]} is newer than this gateway supports "
                f"({SCHEMA_VERSION}); upgrade cybernetic-edge or move the file away"
            )
        self._db = db
        self._cursor = 0
        self._last_id = db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
        self._unacked.clear()
        rows, size, oldest = db.execute(
            "SELECT count(*), coalesce(sum(size), 0), min(added_ms) FROM outbox"
        ).fetchone()
        with self._lock:
            self.stats = OutboxStats(rows, size, oldest, 0)

    @staticmethod
    def _migrate(db: sqlite3.Connection, version: int) -> None:
        db.execute("BEGIN IMMEDIATE")
        if version < 2:
            columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
            if "kind" not in columns:
                db.execute("ALTER TABLE outbox ADD COLUMN kind INTEGER NOT NULL DEFAULT 0")
        if version < 3:  # batches moved to memory
            db.execute("DROP TABLE IF EXISTS batches")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")

    def _close(self) -> None:
        assert self._db is not None
        self._db.close()
        self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    # -- appending ----------------------------------------------------------------------
    async def append(self, readings: Sequence[Reading]) -> int:
        """Store readings durably; returns how many were stored (the rest were dropped)."""
        stored = await self._run(lambda: self._append(readings, READING))
        if stored:
            self.appended.set()
        return stored

    async def append_events(self, events: Sequence[EventRecord]) -> int:
        """Store events durably, like readings (same cap, same batches to the cloud)."""
        stored = await self._run(lambda: self._append(events, EVENT))
        if stored:
            self.appended.set()
        return stored

    def _append(self, items: Sequence[Reading] | Sequence[EventRecord], kind: int) -> int:
        now = self._now_ms()
        rows = [(now, len(b), b, kind) for b in map(_encoder.encode, items)]
        incoming = sum(r[1] for r in rows)
        db = self.db
        dropped: dict[str, int] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            over = self.stats.bytes + incoming - self.settings.max_bytes
            if over > 0:
                if self.settings.overflow is Overflow.DROP_OLDEST:
                    n, freed = self._drop_oldest(over)
                    if n:
                        dropped["overflow_oldest"] = n
                    if freed < over:  # the new readings alone exceed the cap: the oldest go
                        kept, older = self._fit(rows[::-1], self.settings.max_bytes)
                        rows = kept[::-1]
                        if older:
                            dropped["overflow_oldest"] = n + older
                else:
                    rows, refused = self._fit(rows, self.settings.max_bytes - self.stats.bytes)
                    if refused:
                        dropped["overflow_new"] = refused
            db.executemany(
                "INSERT INTO outbox (added_ms, size, body, kind) VALUES (?, ?, ?, ?)", rows
            )
            self._count_drops(dropped)
            db.execute("COMMIT")
            if rows:
                self._last_id = db.execute("SELECT last_insert_rowid()").fetchone()[0]
        except BaseException:
            db.execute("ROLLBACK")
            self._reload_stats()
            raise
        with self._lock:
            self.stats.rows += len(rows)
            self.stats.bytes += sum(r[1] for r in rows)
            if self.stats.oldest_ms is None and rows:
                self.stats.oldest_ms = now
        self._notify_drops(dropped)
        return len(rows)

    @staticmethod
    def _fit(
        rows: list[tuple[int, int, bytes, int]], room: int
    ) -> tuple[list[tuple[int, int, bytes, int]], int]:
        kept: list[tuple[int, int, bytes, int]] = []
        for row in rows:
            if row[1] > room:
                break
            room -= row[1]
            kept.append(row)
        return kept, len(rows) - len(kept)

    def _drop_oldest(self, need: int) -> tuple[int, int]:
        """Delete the oldest rows until ``need`` bytes are free; returns (rows, bytes)."""
        db = self.db
        n = freed = 0
        last_id = 0
        while freed < need:
            chunk = db.execute(
                "SELECT id, size FROM outbox WHERE id > ? ORDER BY id LIMIT 500", (last_id,)
            ).fetchall()
            if not chunk:
                break
            for row_id, size in chunk:
                last_id = row_id
                n += 1
                freed += size
                if freed >= need:
                    break
        if n:
            db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
            with self._lock:
                self.stats.rows -= n
                self.stats.bytes -= freed
                self.stats.oldest_ms = None if self.stats.rows == 0 else self.stats.oldest_ms
        return n, freed

    def _count_drops(self, dropped: dict[str, int]) -> None:
        self.db.executemany(
            "INSERT INTO drops VALUES (?, ?) "
            "ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
            list(dropped.items()),
        )

    def _notify_drops(self, dropped: dict[str, int]) -> None:
        if self._on_drop is not None:
            for reason, n in dropped.items():
                self._on_drop(reason, n)

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
        db.execute("BEGIN IMMEDIATE")
        n = db.execute("DELETE FROM outbox WHERE added_ms < ?", (cutoff,)).rowcount
        if n:
            self._count_drops({"expired": n})
        db.execute("COMMIT")
        if n:
            self._reload_stats()
            self._notify_drops({"expired": n})
        return n

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

    async def ack(self, batch_id: str) -> int:
        """The cloud committed this batch: delete its rows. Unknown ids are ignored."""
        return await self._run(lambda: self._ack(batch_id))

    def _ack(self, batch_id: str) -> int:
        batch = self._unacked.pop(batch_id, None)
        if batch is None:
            return 0
        db = self.db
        span = (batch.first_id, batch.last_id)
        # A deletion need not reach the disk before we go on: lost in a power cut, the rows
        # are sent again and the cloud drops them as duplicates. The next append's fsync
        # makes it durable anyway (the WAL is written in order).
        db.execute("PRAGMA synchronous=OFF")
        try:
            db.execute("BEGIN IMMEDIATE")
            n, size = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM outbox WHERE id BETWEEN ? AND ?",
                span,
            ).fetchone()
            db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", span)
            db.execute("COMMIT")
        finally:
            db.execute("PRAGMA synchronous=FULL")
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
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO dead_letters (at_ms, device, reason, detail, payload) "
            "VALUES (?, ?, ?, ?, ?)",
            [(now, d, r, detail[:500], p[:4096]) for d, r, detail, p in entries],
        )
        db.execute(
            "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?",
            (self._dead_letter_max,),
        )
        db.execute("COMMIT")

    async def dead_letters(self, limit: int = 100) -> list[tuple[str, str, str]]:
        return await self._run(
            lambda: self.db.execute(
                "SELECT device, reason, detail FROM dead_letters ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )

    async def drop_counts(self) -> dict[str, int]:
        return await self._run(lambda: dict(self.db.execute("SELECT reason, count FROM drops")))

    def snapshot(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(**vars(self.stats))
