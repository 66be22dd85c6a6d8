"""The LWW-element map on SQLite: local writes, merges, peers, in one synchronous object.

Conflict rule, the one thing a user can rely on: per (namespace, key) the row with the
highest (hlc, site) wins, compared as integers then as strings; a delete is a row without a
value and wins or loses by the same rule. The merge is one SQL statement,
``INSERT … ON CONFLICT DO UPDATE … WHERE (excluded.hlc, excluded.site) > (hlc, site)``, so
the outcome does not depend on delivery order and applying a row twice changes nothing.

Every row that changes gets the next local *version*; peers ask for rows past a version.
Values larger than ``chunk_bytes`` are stored as immutable chunks plus a manifest row (the
SHA-256 of the value); a remote manifest whose chunks have not all arrived waits in
``pending`` and enters the map in the transaction that completes it, so readers never see a
half-written value.

This object is not thread-safe: :class:`amcp.store.Store` drives it from one writer thread.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec

from amcp.runtime.database import Database, Synchronous
from amcp.runtime.storage import transaction
from amcp.store import peers, reads, schema
from amcp.store.errors import (
    ClockSkewError,
    InvalidRowError,
    StoreClosedError,
    ValueTooLargeError,
)
from amcp.store.hlc import HybridClock, physical_ms, system_wall_ms
from amcp.store.rows import ChangeSet, Chunk, Row

log = logging.getLogger(__name__)

MERGE_SQL = (
    "INSERT INTO map(ns, key, value, hlc, site, chunks, version) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(ns, key) DO UPDATE SET value=excluded.value, hlc=excluded.hlc, "
    "site=excluded.site, chunks=excluded.chunks, version=excluded.version "
    "WHERE (excluded.hlc, excluded.site) > (map.hlc, map.site)"
)
_NOT_SUPERSEDED = (
    "WHERE NOT EXISTS (SELECT 1 FROM map WHERE ns=?1 AND key=?2 AND (hlc, site) >= (?3, ?4))"
)
CHUNK_SQL = (
    "INSERT OR IGNORE INTO chunks(ns, key, hlc, site, idx, data, version) "
    "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 " + _NOT_SUPERSEDED
)
PARK_SQL = (
    "INSERT OR IGNORE INTO pending(ns, key, hlc, site, value, chunks) "
    "SELECT ?1, ?2, ?3, ?4, ?5, ?6 " + _NOT_SUPERSEDED
)
DIGEST_BYTES = 32


class Change(msgspec.Struct, frozen=True):
    """A row that changed in one committed transaction, as subscribers receive it."""

    namespace: str
    key: str
    deleted: bool
    hlc: int
    site: str


Callback = Callable[[list[Change]], None]


class LWWStore:
    def __init__(
        self,
        path: str | Path | Database,
        site: str,
        *,
        wall_ms: Callable[[], int] = system_wall_ms,
        max_ahead_ms: int = 60_000,
        max_value_bytes: int = 16 * 1024 * 1024,
        chunk_bytes: int = 16 * 1024,
        peer_horizon_ms: int = 7 * 24 * 3600 * 1000,
        synchronous: Synchronous = "NORMAL",
    ) -> None:
        """``path``: the store's file, opened here on the calling thread (closed by
        :meth:`close`); or a :class:`~amcp.runtime.database.Database` of the store's schema
        already open, used from its writer thread and left open (how :class:`Store` runs it;
        ``synchronous`` is then the database's)."""
        if not site:
            raise ValueError("site must be a non-empty string")
        if isinstance(path, Database):
            self._file, self._owns_file = path, False
            self._conn = path.connection
        else:
            self._file = schema.open_database(path, synchronous=synchronous)
            self._owns_file = True
            self._conn = self._file.open_sync()
        self.path = str(self._file.path)
        self.site = site
        self.max_value_bytes = max_value_bytes
        self.chunk_bytes = chunk_bytes
        self.peer_horizon_ms = peer_horizon_ms
        try:
            self.database_id, self._version, last = schema.identity(self._conn, self.path, site)
        except BaseException:
            self._close_file()
            raise
        self.clock = HybridClock(wall_ms, max_ahead_ms=max_ahead_ms, last=last)
        self._subscribers: dict[str | None, list[Callback]] = {}
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close_file()

    def _close_file(self) -> None:
        if self._owns_file:
            self._file.close_sync()

    @property
    def version(self) -> int:
        """The newest local version: every committed change has a version at most this."""
        return self._version

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._closed:
            raise StoreClosedError(self.path)
        start = self._version
        try:
            with transaction(self._conn):  # a full disk raises StorageFullError
                # another process (``cybernetic patterns add`` on a running gateway's store)
                # may have written since our last transaction: continue from the stored
                # counter, under the lock
                stored = self._conn.execute(
                    "SELECT value FROM meta WHERE name='version'"
                ).fetchone()
                if stored is not None:
                    self._version = max(self._version, int(stored[0]))
                start = self._version
                yield
                self._conn.executemany(
                    "UPDATE meta SET value=? WHERE name=?",
                    [(self._version, "version"), (self.clock.last, "hlc")],
                )
        except BaseException:
            self._version = start
            raise

    def _versions(self, count: int) -> int:
        """Reserve ``count`` versions; they are ``base + 1 … base + count``."""
        base = self._version
        self._version += count
        return base

    # -- local writes ------------------------------------------------------------------------

    def put(self, namespace: str, key: str, value: bytes) -> Change:
        return self.write([(namespace, key, value)])[0]

    def delete(self, namespace: str, key: str) -> Change:
        return self.write([(namespace, key, None)])[0]

    def write(self, items: Iterable[tuple[str, str, bytes | None]]) -> list[Change]:
        """Write values (``None`` deletes) in one transaction, each with a fresh clock."""
        batch = list(items)
        for namespace, key, value in batch:
            self._check_size(namespace, key, value)
        with self._transaction():
            changes = self._write_local(batch)
        self._notify(changes)
        return changes

    def update(
        self, namespace: str, key: str, fn: Callable[[bytes | None], bytes | None]
    ) -> Change:
        """Read-modify-write one key atomically (counters use this)."""
        with self._transaction():
            new = fn(reads.get(self._conn, namespace, key))
            self._check_size(namespace, key, new)
            changes = self._write_local([(namespace, key, new)])
        self._notify(changes)
        return changes[0]

    def _check_size(self, namespace: str, key: str, value: bytes | None) -> None:
        if value is not None and len(value) > self.max_value_bytes:
            raise ValueTooLargeError(namespace, key, len(value), self.max_value_bytes)

    def _write_local(self, batch: list[tuple[str, str, bytes | None]]) -> list[Change]:
        rows: list[Row] = []
        chunks: list[Chunk] = []
        size = self.chunk_bytes
        for namespace, key, value in batch:
            hlc = self.clock.now()
            if value is not None and len(value) > size:
                parts = [value[i : i + size] for i in range(0, len(value), size)]
                chunks += [Chunk(namespace, key, hlc, self.site, i, p) for i, p in enumerate(parts)]
                digest = hashlib.sha256(value).digest()
                rows.append(Row(namespace, key, digest, hlc, self.site, len(parts)))
            else:
                rows.append(Row(namespace, key, value, hlc, self.site))
        self._insert_chunks(chunks)
        return self._apply(rows)

    # -- merging remote rows -----------------------------------------------------------------

    def merge(
        self,
        rows: Sequence[Row],
        chunks: Sequence[Chunk] = (),
        *,
        peer: str | None = None,
        peer_version: int | None = None,
    ) -> list[Change]:
        """Merge a peer's rows and chunks in one transaction; return what changed here.

        With ``peer`` and ``peer_version`` the peer's ``received`` watermark moves in the same
        transaction, so a crash never records rows as received that were not committed.
        Raises :class:`ClockSkewError` (nothing applied) when a clock is too far ahead.
        """
        self._validate(rows, chunks)
        top = self._check_skew(rows, chunks)
        with self._transaction():
            ready: list[Row] = []
            if chunks:
                self._insert_chunks(chunks)
                ready = self._completed_pending(chunks)
            for row in rows:
                if row.chunks == 0:
                    ready.append(row)
                elif self._chunk_count(row) == row.chunks:
                    reads.assemble(self._conn, row)
                    ready.append(row)
                else:
                    self._conn.execute(PARK_SQL, (*_identity(row), row.value, row.chunks))
            changes = self._apply(ready) if ready else []
            if peer is not None and peer_version is not None:
                peers.received(self._conn, peer, peer_version, self.clock.wall_ms())
            self.clock.observe(top)
        self._notify(changes)
        return changes

    def _validate(self, rows: Sequence[Row], chunks: Sequence[Chunk]) -> None:
        limit = self.max_value_bytes
        suspects = [r for r in rows if not r.site or r.chunks or len(r.value or b"") > limit]
        for row in suspects:
            if not row.site:
                raise InvalidRowError(row.namespace, row.key, "empty site")
            if row.chunks < 0 or (row.chunks > 0 and len(row.value or b"") != DIGEST_BYTES):
                raise InvalidRowError(row.namespace, row.key, "bad chunk manifest")
            self._check_size(row.namespace, row.key, row.value)
        for chunk in chunks:
            if not chunk.site or chunk.index < 0 or not chunk.data:
                raise InvalidRowError(chunk.namespace, chunk.key, "bad chunk")

    def _check_skew(self, rows: Sequence[Row], chunks: Sequence[Chunk]) -> int:
        """Refuse the batch if any clock is too far ahead; return its highest clock."""
        top = max(max((r.hlc for r in rows), default=0), max((c.hlc for c in chunks), default=0))
        if top and self.clock.too_far_ahead(top):
            items: list[Row | Chunk] = [*rows, *chunks]
            worst = max(items, key=lambda r: r.hlc)
            raise ClockSkewError(
                worst.namespace,
                worst.key,
                site=worst.site,
                remote_ms=physical_ms(worst.hlc),
                local_ms=self.clock.wall_ms(),
                max_ahead_ms=self.clock.max_ahead_ms,
            )
        return top

    def _insert_chunks(self, chunks: Sequence[Chunk]) -> None:
        if not chunks:
            return
        base = self._versions(len(chunks))
        self._conn.executemany(
            CHUNK_SQL,
            [
                (c.namespace, c.key, c.hlc, c.site, c.index, c.data, base + i + 1)
                for i, c in enumerate(chunks)
            ],
        )

    def _chunk_count(self, row: Row) -> int:
        return int(
            self._conn.execute(
                "SELECT count(*) FROM chunks WHERE ns=? AND key=? AND hlc=? AND site=?",
                _identity(row),
            ).fetchone()[0]
        )

    def _completed_pending(self, chunks: Sequence[Chunk]) -> list[Row]:
        """Manifests parked earlier whose last chunk just arrived, removed from ``pending``."""
        ready: list[Row] = []
        for ident in dict.fromkeys((c.namespace, c.key, c.hlc, c.site) for c in chunks):
            found = self._conn.execute(
                "SELECT value, chunks FROM pending WHERE ns=? AND key=? AND hlc=? AND site=?",
                ident,
            ).fetchone()
            if found is None:
                continue
            ns, key, hlc, site = ident
            row = Row(ns, key, found[0], hlc, site, found[1])
            if self._chunk_count(row) == row.chunks:
                reads.assemble(self._conn, row)
                self._conn.execute(
                    "DELETE FROM pending WHERE ns=? AND key=? AND hlc=? AND site=?", ident
                )
                ready.append(row)
        return ready

    def _apply(self, rows: Sequence[Row]) -> list[Change]:
        base = self._versions(len(rows))
        self._conn.executemany(
            MERGE_SQL,
            [
                (r.namespace, r.key, r.value, r.hlc, r.site, r.chunks, base + i + 1)
                for i, r in enumerate(rows)
            ],
        )
        changed = self._conn.execute(
            "SELECT ns, key, value IS NULL, hlc, site FROM map "
            "WHERE version > ? AND version <= ? ORDER BY version",
            (base, base + len(rows)),
        ).fetchall()
        if (
            changed
            and self._conn.execute(
                "SELECT EXISTS(SELECT 1 FROM chunks) OR EXISTS(SELECT 1 FROM pending)"
            ).fetchone()[0]
        ):
            keys = [(ns, key, hlc, site) for ns, key, _, hlc, site in changed]
            self._conn.executemany(
                "DELETE FROM chunks WHERE ns=? AND key=? AND (hlc, site) < (?, ?)", keys
            )
            self._conn.executemany(
                "DELETE FROM pending WHERE ns=? AND key=? AND (hlc, site) <= (?, ?)", keys
            )
        return [Change(ns, key, bool(dead), hlc, site) for ns, key, dead, hlc, site in changed]

    # -- reads on the writer's connection ----------------------------------------------------

    def get(self, namespace: str, key: str) -> bytes | None:
        return reads.get(self._conn, namespace, key)

    def items(self, namespace: str, prefix: str = "") -> dict[str, bytes]:
        return reads.items(self._conn, namespace, prefix)

    def changes_since(
        self, version: int, limit_bytes: int = 96 * 1024, *, exclude_site: str | None = None
    ) -> ChangeSet:
        return reads.changes_since(self._conn, version, limit_bytes, exclude_site=exclude_site)

    def canonical_dump(self) -> bytes:
        return reads.canonical_dump(self._conn)

    # -- peers -------------------------------------------------------------------------------

    def hello(self, peer: str, database_id: str) -> peers.PeerState:
        with self._transaction():
            return peers.hello(self._conn, peer, database_id, self.clock.wall_ms())

    def ack(self, peer: str, version: int) -> None:
        """Record that ``peer`` committed our changes up to ``version`` (never moves back)."""
        with self._transaction():
            peers.ack(self._conn, peer, min(version, self._version), self.clock.wall_ms())

    def peer(self, peer: str) -> peers.PeerState | None:
        return peers.get(self._conn, peer)

    def peers(self) -> list[peers.PeerState]:
        return peers.all_peers(self._conn)

    def collect_garbage(self) -> tuple[list[str], int]:
        """Expire silent peers, then delete tombstones all live peers acknowledged.

        Returns (expired peers, tombstones deleted).
        """
        with self._transaction():
            gone = peers.expire(self._conn, self.clock.wall_ms(), self.peer_horizon_ms)
            return gone, peers.collect_tombstones(self._conn)

    # -- notifications -----------------------------------------------------------------------

    def subscribe(self, namespace: str | None, callback: Callback) -> Callable[[], None]:
        """Call ``callback(changes)`` after each commit that changed rows of ``namespace``.

        ``None`` subscribes to every namespace. Callbacks run on the writing thread after the
        commit; an exception in one is logged and never undoes or blocks the write. Returns
        a function that unsubscribes.
        """
        # Copy-on-write: the writer thread may be iterating the old list right now.
        self._subscribers[namespace] = [*self._subscribers.get(namespace, []), callback]

        def unsubscribe() -> None:
            callbacks = self._subscribers.get(namespace, [])
            self._subscribers[namespace] = [cb for cb in callbacks if cb is not callback]

        return unsubscribe

    def _notify(self, changes: list[Change]) -> None:
        if not changes or not self._subscribers:
            return
        by_ns: dict[str, list[Change]] = {}
        for change in changes:
            by_ns.setdefault(change.namespace, []).append(change)
        targets = [(cb, changes) for cb in self._subscribers.get(None, [])]
        for namespace, group in by_ns.items():
            targets += [(cb, group) for cb in self._subscribers.get(namespace, [])]
        for callback, group in targets:
            try:
                callback(group)
            except Exception:
                log.exception("store subscriber %r failed", callback)


def _identity(row: Row) -> tuple[str, str, int, str]:
    return row.namespace, row.key, row.hlc, row.site
