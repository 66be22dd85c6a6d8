"""One SQLite file behind one class: the project's pragmas, its schema, its threads, reopenable.

Every SQLite file of the project (outbox, CRDT store, reading store, replay guard, enrolment
register) is a :class:`Database`. It sets the pragmas (WAL, the owner's ``synchronous``, a busy
timeout, explicit transactions), brings the file to its :class:`Schema` (numbered, forward-only
migrations, the version in ``PRAGMA user_version``; a file from a newer binary is refused with
:class:`SchemaTooNewError` naming it), and then serves the owner in one of two ways:

- **async owners** (outbox, CRDT store, reading store): :meth:`Database.open` starts one writer
  thread fed by a queue and a pool of reader threads. ``await db.write(fn)`` runs ``fn(conn)``
  in one write transaction on the writer thread, after everything queued before it;
  ``await db.call(fn)`` runs it there without opening one (for owners that run their own);
  ``await db.read(fn)`` runs it on a read-only connection of a reader thread, in one snapshot
  (WAL: readers never wait for the writer, nor it for them). The threads and connections are made
  by ``open`` and ended by :meth:`Database.close`, so a supervisor that restarts the owner closes
  and opens the *same* object again (a pool shut down in ``close`` cannot be reused: every restart
  failed with "cannot schedule new futures after shutdown").
- **in-thread owners** (replay guard, enrolment register, the CLI's store): :meth:`open_sync`
  returns the connection, used from the owner's thread (under its lock); :meth:`close_sync`.

Write transactions go through :func:`amcp.runtime.storage.transaction`, so a full disk is a
:class:`~amcp.runtime.storage.StorageFullError` whatever the owner (waited out, never a crash).
Any other failure of the file itself (:func:`is_database_failure`: an I/O error, a read-only or
corrupt file) sets :attr:`Database.failed`; :meth:`Database.held` then raises, so the child
holding the database fails and its supervisor opens it again (docs/architecture.md, Seams).

:class:`AsyncDatabase` is the seam the async owners are written against: ``open``, ``close``,
``write``, ``read``, ``held``, generic in the connection type, so a PostgreSQL pool can stand
behind the same calls for the cloud.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from amcp.runtime.storage import StorageFullError, is_storage_full, transaction

T = TypeVar("T")
C_co = TypeVar("C_co", covariant=True)
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
_Job = tuple[Callable[[sqlite3.Connection], object], concurrent.futures.Future[object]]
BUSY_TIMEOUT_MS = 10_000
"""How long a write waits for another process's write lock (a CLI command, a backup)."""


class DatabaseError(Exception):
    """Base of the errors the database class raises itself (``path`` names the file)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class DatabaseClosedError(DatabaseError, RuntimeError):
    """The database is not open (before ``open`` or after ``close``)."""


class DatabaseFailedError(DatabaseError, RuntimeError):
    """The file itself failed (I/O error, read-only or corrupt file): it must be reopened."""


class SchemaTooNewError(DatabaseError):
    """The file was written by a newer binary (its schema version is beyond what this one
    knows): opening it anyway could corrupt what the newer binary wrote, so it is refused."""

    def __init__(self, path: str, found: int, supported: int, name: str = "database") -> None:
        super().__init__(
            f"{path}: {name} schema {found} is newer than this binary supports ({supported}); "
            "upgrade cybernetic-edge or move the file away",
            path,
        )
        self.found = found
        self.supported = supported
        self.name = name


def is_database_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the database itself is unusable (an I/O error, a read-only or
    corrupt file, a lost lock), as opposed to a full disk (waited out, see
    :mod:`amcp.runtime.storage`) or a bad statement or value (the caller's bug or data)."""
    if isinstance(exc, DatabaseClosedError | DatabaseFailedError):
        return True  # closed under the caller by a supervisor reopening it: not the data
    if isinstance(exc, StorageFullError) or is_storage_full(exc):
        return False
    if isinstance(exc, sqlite3.OperationalError) and _is_contention(exc):
        return False  # another process held a lock past the busy timeout: the file is fine
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _is_contention(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


Migration = str | Callable[[sqlite3.Connection], None]
"""One step forward: SQL statements (separated by ``;``) or a function of the connection."""


@dataclass(frozen=True)
class Schema:
    """A file's schema as numbered, forward-only steps: ``migrations[n]`` takes version ``n`` to
    ``n + 1``, each in its own transaction with the new ``user_version`` (a crash mid-upgrade
    leaves the previous version intact). Steps are never edited once released: a change is a
    new step at the end."""

    name: str
    """What the file is ("outbox"): named in errors."""
    migrations: Sequence[Migration]
    legacy_version: Callable[[sqlite3.Connection], int] | None = None
    """For a file whose ``user_version`` is 0: the version it is at by an older convention
    (the outbox kept its version in a table), or 0 for a new file."""
    too_new: type[SchemaTooNewError] = SchemaTooNewError
    """The error raised for a newer file (an owner's subclass, so its callers catch its type)."""

    @property
    def version(self) -> int:
        return len(self.migrations)


def migrate(conn: sqlite3.Connection, schema: Schema, path: str) -> int:
    """Bring the file to ``schema.version``; returns the version it was at."""
    recorded = found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found == 0 and schema.legacy_version is not None:
        found = schema.legacy_version(conn)
    if found > schema.version:
        raise schema.too_new(path, found, schema.version, schema.name)
    if found == schema.version and recorded != found:  # a legacy file already current
        with transaction(conn):
            conn.execute(f"PRAGMA user_version={found}")
    for version in range(found, schema.version):
        step = schema.migrations[version]
        with transaction(conn):
            if isinstance(step, str):
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                step(conn)
            conn.execute(f"PRAGMA user_version={version + 1}")
    return found


def connect(
    path: Path | str | None,
    *,
    synchronous: str = "FULL",
    readonly: bool = False,
    cache_kib: int | None = None,
) -> sqlite3.Connection:
    """A connection with the project's pragmas: WAL, the given ``synchronous``, a busy timeout
    (another process, such as a CLI command, may hold the write lock briefly), and autocommit
    mode so transactions are explicit (:func:`~amcp.runtime.storage.transaction`). ``path=None``
    is a private in-memory database (tests, benchmarks)."""
    level = synchronous.upper()
    if level not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"unknown synchronous level {synchronous!r}")
    if path is None:
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    elif readonly:
        db = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={level}")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if cache_kib is not None:
        db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    return db


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction (one WAL snapshot), or nothing extra when one is open already."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        still_open: bool = conn.in_transaction  # SQLite may have ended it (an error)
        if still_open:
            conn.execute("COMMIT")


class AsyncDatabase(Protocol[C_co]):
    """The storage seam async owners are written against (``C_co``: the connection type their
    functions take). :class:`Database` is the SQLite one; a PostgreSQL pool running the
    functions on its own connections would be another."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, fn: Callable[[C_co], T]) -> T:
        """``fn(conn)`` in one write transaction, committed when this returns."""
        ...

    async def read(self, fn: Callable[[C_co], T]) -> T:
        """``fn(conn)`` on a read-only connection, in one snapshot, beside the writes."""
        ...

    async def held(self) -> None:
        """Never returns; raises once the database failed (the holding child then fails)."""
        ...


class Database:
    """One SQLite file; see the module's documentation for the two ways of using it."""

    def __init__(
        self,
        path: Path | str | None,
        *,
        name: str,
        schema: Schema | None = None,
        synchronous: Synchronous = "FULL",
        setup: Callable[[sqlite3.Connection], None] | None = None,
        readers: int = 1,
        cache_kib: int | None = None,
    ) -> None:
        """``schema`` is migrated at every open; ``setup(conn)`` runs after it, on the writer
        thread (the owner's in-memory state from the file). ``readers``: reader threads, each
        with its own read-only connection. ``path=None``: in memory (in-thread owners only)."""
        self.path = None if path is None else Path(path)
        self.name = name
        self.schema = schema
        self.synchronous: Synchronous = synchronous
        self._setup = setup
        self._readers = readers
        self._cache_kib = cache_kib
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self.failed = asyncio.Event()
        """Set when the database itself failed (see :func:`is_database_failure`); the child
        that holds it then fails, so its supervisor reopens it. Cleared by :meth:`open`."""
        self.failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"Database({self.name!r}, {str(self.path or ':memory:')!r})"

    @property
    def is_open(self) -> bool:
        return self._thread is not None or self._conn is not None

    @property
    def connection(self) -> sqlite3.Connection:
        """The writer's connection: for code on the writer thread (the ``fn`` of
        :meth:`write` and :meth:`call`), or the owner's thread after :meth:`open_sync`."""
        conn = self._conn
        if conn is None:
            raise self._closed()
        return conn

    def _closed(self) -> DatabaseClosedError:
        return DatabaseClosedError(f"{self.name} database {self} is not open", str(self.path))

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        return connect(
            self.path, synchronous=self.synchronous, readonly=readonly, cache_kib=self._cache_kib
        )

    def _prepare(self) -> sqlite3.Connection:
        """Connect, migrate and set up: a connection ready for the owner, or an exception."""
        conn = self._connect()
        try:
            if self.schema is not None:
                migrate(conn, self.schema, str(self.path or ":memory:"))
            if self._setup is not None:
                self._setup(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- in-thread owners -----------------------------------------------------------------
    def open_sync(self) -> sqlite3.Connection:
        """Open on the calling thread (no writer thread); returns the connection, which the
        owner uses from its own thread (under its own lock when it has several)."""
        if self._thread is not None:
            raise DatabaseError(f"{self} is open with a writer thread", str(self.path))
        if self._conn is None:
            self._conn = self._prepare()
        return self._conn

    def close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- async owners ---------------------------------------------------------------------
    async def open(self) -> None:
        """Start the writer thread (which opens, migrates and runs ``setup``) and the readers.
        Opening an open database does nothing; a closed one opens again."""
        if self._thread is not None:
            return
        if self._conn is not None:
            raise DatabaseError(f"{self} is open on its owner's thread", str(self.path))
        self._jobs = queue.SimpleQueue()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._run, args=(started,), name=f"{self.name}-writer", daemon=True
        )
        self._thread = thread
        thread.start()
        try:
            await asyncio.wrap_future(started)
        except BaseException:
            await asyncio.to_thread(thread.join)
            self._thread = None
            raise
        if self.path is not None and self._readers > 0:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._readers, thread_name_prefix=f"{self.name}-reader"
            )
        self.failed.clear()
        self.failure = None

    async def close(self) -> None:
        """Finish every queued write, then close; :meth:`open` may be called again."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(thread.join)
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)
        with self._reader_lock:
            conns, self._reader_conns = self._reader_conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()  # the next open's readers connect afresh

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._prepare()
        except BaseException as exc:
            started.set_exception(exc)
            return
        self._conn = conn
        started.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                fn, fut = job
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn(conn))
                except BaseException as exc:
                    fut.set_exception(exc)
        finally:
            self._conn = None
            conn.close()

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread, after every job queued before it,
        without opening a transaction (``fn`` runs its own with
        :func:`~amcp.runtime.storage.transaction`)."""
        if self._thread is None:
            raise self._closed()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, fut))  # type: ignore[arg-type]
        try:
            return await asyncio.wrap_future(fut)
        except sqlite3.Error as exc:
            if is_database_failure(exc) and not self.failed.is_set():
                self.failure = exc
                self.failed.set()
            raise

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in one write transaction on the writer thread: committed when
        this returns, rolled back if ``fn`` raises (a full disk as
        :class:`~amcp.runtime.storage.StorageFullError`)."""

        def run(conn: sqlite3.Connection) -> T:
            with transaction(conn):
                return fn(conn)

        return await self.call(run)

    async def held(self) -> None:
        """Return never; raise :class:`DatabaseFailedError` once the database failed (what
        the child holding it awaits: see :func:`amcp.runtime.supervisor.holding`)."""
        await self.failed.wait()
        raise DatabaseFailedError(
            f"{self.name} database {self.path} failed: {self.failure}", str(self.path)
        )

    def reader(self) -> sqlite3.Connection:
        """The calling reader thread's read-only connection (made on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect(readonly=True)
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on a reader's read-only connection, in one snapshot; reads
        run beside each other and beside the writer (never queued behind writes)."""
        pool = self._pool
        if pool is None:
            raise self._closed()

        def run() -> T:
            with snapshot(self.reader()) as conn:
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(pool, run)
