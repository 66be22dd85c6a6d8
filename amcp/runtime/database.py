"""One SQLite file owned by one writer thread: the project's pragmas, reopenable.

Every write runs on the database's own writer thread, fed by a queue (``await db.write(fn)``
calls ``fn(connection)`` there, in submission order), so callers on the event loop never
block on SQLite and never share a connection across threads. Reads that must not queue
behind writes (``await db.read(fn)``) run on a second, read-only connection (WAL: readers
never block the writer, nor it them).

The threads and connections are made by :meth:`Database.open` and ended by
:meth:`Database.close`, so a supervisor that restarts the owner can close and open the same
object again (a thread pool shut down in ``close`` cannot be reused: the owner's restarts
failed with "cannot schedule new futures after shutdown"). ``setup(connection)`` runs on the
writer thread at every open, before anything else: the owner's schema and migrations.

Write transactions go through :func:`amcp.runtime.storage.transaction`, so a full disk is a
:class:`~amcp.runtime.storage.StorageFullError` whatever the owner.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from amcp.runtime.storage import StorageFullError, is_storage_full

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL"]
_Job = tuple[Callable[[sqlite3.Connection], object], concurrent.futures.Future[object]]


class DatabaseClosedError(RuntimeError):
    """The database is not open (before ``open`` or after ``close``)."""


class DatabaseFailedError(RuntimeError):
    """A write failed in a way that needs the file reopened (I/O error, corruption)."""


def is_database_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the database itself is unusable (an I/O error, a read-only or
    corrupt file, a lost lock), as opposed to a full disk (waited out, see
    :mod:`amcp.runtime.storage`) or a bad statement or value (the caller's bug or data)."""
    if isinstance(exc, DatabaseClosedError | DatabaseFailedError):
        return True  # closed under the caller by a supervisor reopening it: not the data
    if isinstance(exc, StorageFullError) or is_storage_full(exc):
        return False
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def connect(
    path: Path, *, synchronous: Synchronous = "FULL", readonly: bool = False
) -> sqlite3.Connection:
    """A connection with the project's pragmas: WAL, the given ``synchronous``, a busy
    timeout (another process, such as a CLI command, may hold the write lock briefly), and
    autocommit mode so transactions are explicit (:func:`~amcp.runtime.storage.transaction`)."""
    if readonly:
        db = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA busy_timeout=5000")
    return db


class Database:
    def __init__(
        self,
        path: Path,
        *,
        name: str,
        synchronous: Synchronous = "FULL",
        setup: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self.synchronous: Synchronous = synchronous
        self._setup = setup
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None
        self.failed = asyncio.Event()
        """Set when the database itself failed (see :func:`is_database_failure`); the child
        that holds it then fails, so its supervisor reopens it. Cleared by :meth:`open`."""
        self.failure: BaseException | None = None

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    @property
    def connection(self) -> sqlite3.Connection:
        """The writer's connection: only for code running on the writer thread (``fn`` of
        :meth:`write`)."""
        if self._conn is None:
            raise DatabaseClosedError(f"{self.name} database {self.path} is not open")
        return self._conn

    async def open(self) -> None:
        if self._thread is not None:
            return
        self._jobs = queue.SimpleQueue()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name=f"{self.name}-writer", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wrap_future(started)
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            raise
        self._reader = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{self.name}-reader"
        )
        self.failed.clear()
        self.failure = None

    async def close(self) -> None:
        """Finish every queued write, then close; :meth:`open` may be called again."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(thread.join)
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.submit(self._close_reader).result()
            reader.shutdown(wait=True)

    def _close_reader(self) -> None:
        if self._reader_conn is not None:
            self._reader_conn.close()
            self._reader_conn = None

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        try:
            conn = connect(self.path, synchronous=self.synchronous)
            try:
                if self._setup is not None:
                    self._setup(conn)
            except BaseException:
                conn.close()
                raise
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

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread, after every write queued before it."""
        if self._thread is None:
            raise DatabaseClosedError(f"{self.name} database {self.path} is not open")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, fut))  # type: ignore[arg-type]
        try:
            return await asyncio.wrap_future(fut)
        except sqlite3.Error as exc:
            if is_database_failure(exc) and not self.failed.is_set():
                self.failure = exc
                self.failed.set()
            raise

    async def held(self) -> None:
        """Return never; raise :class:`DatabaseFailedError` once the database failed (what
        the child holding it awaits: see :func:`amcp.runtime.supervisor.holding`)."""
        await self.failed.wait()
        raise DatabaseFailedError(f"{self.name} database {self.path} failed: {self.failure}")

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the read-only connection (never queued behind writes)."""
        reader = self._reader
        if reader is None:
            raise DatabaseClosedError(f"{self.name} database {self.path} is not open")

        def run() -> T:
            if self._reader_conn is None:
                self._reader_conn = connect(self.path, synchronous=self.synchronous, readonly=True)
            return fn(self._reader_conn)

        return await asyncio.get_running_loop().run_in_executor(reader, run)
