"""The asyncio face of the store: one writer thread fed by a queue, concurrent readers.

Why a thread and a queue: SQLite allows one writer at a time, and a blocking commit must not
stall the event loop. Every write (local or merge) is a job on the queue, run in order by
the thread that owns the :class:`LWWStore`; readers use their own read-only connections
from worker threads and see committed snapshots (WAL), so reads never wait for writes.

Change notifications are delivered after commit. :meth:`Store.subscribe` with the running
loop delivers them on that loop (``call_soon_threadsafe``); without one, on the writer thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from amcp.store import reads, schema
from amcp.store.errors import StoreClosedError
from amcp.store.lww import Callback, Change, LWWStore
from amcp.store.peers import PeerState
from amcp.store.rows import ChangeSet, Chunk, Row

T = TypeVar("T")
_Job = tuple[Callable[[LWWStore], Any], concurrent.futures.Future[Any]]


class Store:
    """Async store over one SQLite file; construct, then ``async with store:`` or open/close.

    Keyword options are those of :class:`LWWStore` (clock, limits, peer horizon, durability).
    """

    def __init__(self, path: str | Path, site: str, **options: Any) -> None:
        self.path = str(path)
        self.site = site
        self._options = options
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._core: LWWStore | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.database_id = ""

    async def open(self) -> Self:
        """Open (or open again after :meth:`close`: a supervisor restarts the same object):
        the writer thread and the readers' pool are made here, not in ``__init__``."""
        if self._thread is not None:
            return self
        self._executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="store-read")
        ready: concurrent.futures.Future[LWWStore] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"store-writer:{self.site}", daemon=True
        )
        self._thread.start()
        try:
            self._core = await asyncio.wrap_future(ready)
        except BaseException:
            self._executor.shutdown()
            self._thread = self._executor = None
            raise
        self.database_id = self._core.database_id
        return self

    async def close(self) -> None:
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _run(self, ready: concurrent.futures.Future[LWWStore]) -> None:
        try:
            core = LWWStore(self.path, self.site, **self._options)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(core)
        try:
            while (job := self._jobs.get()) is not None:
                fn, fut = job
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn(core))
                except BaseException as exc:
                    fut.set_exception(exc)
        finally:
            core.close()

    async def call(self, fn: Callable[[LWWStore], T]) -> T:
        """Run ``fn(core)`` on the writer thread, after every write queued before it."""
        if self._thread is None:
            raise StoreClosedError(self.path)
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, fut))
        return await asyncio.wrap_future(fut)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = schema.connect(self.path, readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None or self._executor is None:
            raise StoreClosedError(self.path)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._reader()))

    # -- writes ------------------------------------------------------------------------------

    async def put(self, namespace: str, key: str, value: bytes) -> Change:
        return await self.call(lambda s: s.put(namespace, key, value))

    async def delete(self, namespace: str, key: str) -> Change:
        return await self.call(lambda s: s.delete(namespace, key))

    async def write(self, items: Iterable[tuple[str, str, bytes | None]]) -> list[Change]:
        batch = list(items)
        return await self.call(lambda s: s.write(batch))

    async def update(
        self, namespace: str, key: str, fn: Callable[[bytes | None], bytes | None]
    ) -> Change:
        """Atomic read-modify-write; ``fn`` runs on the writer thread, so keep it short."""
        return await self.call(lambda s: s.update(namespace, key, fn))

    async def merge(
        self,
        rows: Sequence[Row],
        chunks: Sequence[Chunk] = (),
        *,
        peer: str | None = None,
        peer_version: int | None = None,
    ) -> list[Change]:
        return await self.call(
            lambda s: s.merge(rows, chunks, peer=peer, peer_version=peer_version)
        )

    # -- reads -------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> bytes | None:
        return await self._read(lambda c: reads.get(c, namespace, key))

    async def get_entry(self, namespace: str, key: str) -> reads.Entry | None:
        return await self._read(lambda c: reads.get_entry(c, namespace, key))

    async def items(self, namespace: str, prefix: str = "") -> dict[str, bytes]:
        return await self._read(lambda c: reads.items(c, namespace, prefix))

    async def changes_since(
        self, version: int, limit_bytes: int = 96 * 1024, *, exclude_site: str | None = None
    ) -> ChangeSet:
        return await self._read(
            lambda c: reads.changes_since(c, version, limit_bytes, exclude_site=exclude_site)
        )

    async def canonical_dump(self) -> bytes:
        return await self._read(reads.canonical_dump)

    async def version(self) -> int:
        return await self._read(reads.current_version)

    # -- peers -------------------------------------------------------------------------------

    async def hello(self, peer: str, database_id: str) -> PeerState:
        return await self.call(lambda s: s.hello(peer, database_id))

    async def ack(self, peer: str, version: int) -> None:
        await self.call(lambda s: s.ack(peer, version))

    async def peer(self, peer: str) -> PeerState | None:
        return await self.call(lambda s: s.peer(peer))

    async def collect_garbage(self) -> tuple[list[str], int]:
        return await self.call(lambda s: s.collect_garbage())

    # -- notifications -----------------------------------------------------------------------

    def subscribe(
        self,
        namespace: str | None,
        callback: Callback,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Callable[[], None]:
        """Call ``callback(changes)`` after commits touching ``namespace`` (``None``: all).

        With ``loop`` the callback runs on that event loop; otherwise on the writer thread,
        where it must be quick and must not call back into this store synchronously.
        Returns a function that unsubscribes. Must be called after :meth:`open`.
        """
        core = self._core
        if core is None or self._thread is None:
            raise StoreClosedError(self.path)
        deliver = callback
        if loop is not None:
            target = loop

            def deliver(changes: list[Change]) -> None:
                if not target.is_closed():
                    target.call_soon_threadsafe(callback, changes)

        return core.subscribe(namespace, deliver)
