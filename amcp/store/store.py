"""The asyncio face of the store: one writer thread fed by a queue, concurrent readers.

Why a thread and a queue: SQLite allows one writer at a time, and a blocking commit must not
stall the event loop. The file is an :class:`amcp.runtime.database.Database`: every write
(local or merge) is a job on its queue, run in order on its writer thread by the
:class:`LWWStore` that lives there; readers use their own read-only connections from reader
threads and see committed snapshots (WAL), so reads never wait for writes. The threads are made
by :meth:`Store.open` and ended by :meth:`Store.close`, so a supervisor restarts the same object.

Change notifications are delivered after commit. :meth:`Store.subscribe` with the running
loop delivers them on that loop (``call_soon_threadsafe``); without one, on the writer thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
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
READERS = 4


class Store:
    """Async store over one SQLite file; construct, then ``async with store:`` or open/close
    (and open again after close: a supervisor restarts the same object).

    Keyword options are those of :class:`LWWStore` (clock, limits, peer horizon, durability).
    """

    def __init__(self, path: str | Path, site: str, **options: Any) -> None:
        self.path = str(path)
        self.site = site
        self._options = {k: v for k, v in options.items() if k != "synchronous"}
        self._file = schema.open_database(
            path, synchronous=options.get("synchronous", "NORMAL"), readers=READERS
        )
        self._core: LWWStore | None = None
        self.database_id = ""

    async def open(self) -> Self:
        """Open (or open again after :meth:`close`): the writer thread and the readers' pool
        are made here, not in ``__init__``."""
        if self._core is not None:
            return self
        await self._file.open()
        try:
            core = await self._file.call(
                lambda _c: LWWStore(self._file, self.site, **self._options)
            )
        except BaseException:
            await self._file.close()
            raise
        self._core = core
        self.database_id = core.database_id
        return self

    async def close(self) -> None:
        core, self._core = self._core, None
        if core is None:
            return
        try:
            await self._file.call(lambda _c: core.close())
        finally:
            await self._file.close()

    async def held(self) -> None:
        """Return never; raise once the store's database failed (an I/O error, a read-only
        or corrupt file), so the child holding it fails and its supervisor reopens it."""
        await self._file.held()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def call(self, fn: Callable[[LWWStore], T]) -> T:
        """Run ``fn(core)`` on the writer thread, after every write queued before it."""
        core = self._core
        if core is None:
            raise StoreClosedError(self.path)
        return await self._file.call(lambda _c: fn(core))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._core is None:
            raise StoreClosedError(self.path)
        return await self._file.read(fn)

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
        if core is None:
            raise StoreClosedError(self.path)
        deliver = callback
        if loop is not None:
            target = loop

            def deliver(changes: list[Change]) -> None:
                if not target.is_closed():
                    target.call_soon_threadsafe(callback, changes)

        return core.subscribe(namespace, deliver)
