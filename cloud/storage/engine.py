"""The cloud's storage seam: one transaction interface, two engines (SQLite and PostgreSQL).

Everything the cloud keeps (readings, rollups, gateways, devices, events, the nonce registry,
the seed's audit, policy and graph tables) is written and read through an :class:`Engine`:
``await engine.write(fn)`` runs ``fn(tx)`` in one transaction, ``await engine.read(fn)`` in one
read snapshot. ``fn`` is plain synchronous code over a :class:`Tx`, the same function for both
engines: SQLite runs it on its writer thread (:class:`~amcp.runtime.database.Database`),
PostgreSQL on a thread holding a pooled psycopg connection. Statements are written once, with
``?`` placeholders and the SQL both engines share (``INSERT ... ON CONFLICT``, ``RETURNING``);
where the two differ (JSON functions, ``least``/``min``) the code asks :attr:`Tx.dialect`.

Why threads and psycopg's synchronous pool rather than its async pool: the store functions are
then written once for both engines (SQLite has no async driver that is not a thread underneath),
and psycopg releases the GIL while it waits on the network, so a few writer threads serve the
cloud's transactions in parallel. See docs/scale.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:
    from cloud.storage.migrations import Step

T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]
OnOpen = Literal["migrate", "check", "leave"]
"""What ``open`` does with the schema: apply what is pending; refuse to open while steps are
pending (:class:`PendingMigrationsError`); or neither (``cybernetic cloud migrate``)."""
Row = tuple[Any, ...]


class Tx(Protocol):
    """One open transaction (or read snapshot) of either engine."""

    dialect: Dialect

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Run one statement; the rows it returns (none for most writes)."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> int:
        """Run one statement for each row; the number of rows it changed in all."""
        ...

    def script(self, sql: str) -> None:
        """Run several statements separated by ``;`` (migrations)."""
        ...

    def insert_new(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]
    ) -> int:
        """Insert the rows whose key is not there yet (``ON CONFLICT DO NOTHING``); how many
        were new. The bulk path: ``COPY`` through a staging table on PostgreSQL."""
        ...


class Engine(Protocol):
    """What the cloud's stores are written against (docs/architecture.md, Seams)."""

    name: Dialect

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def held(self) -> None:
        """Return never; raise once the engine itself failed (its holder is then restarted)."""
        ...

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """``fn`` in one write transaction, committed before this returns."""
        ...

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """``fn`` in one read-only snapshot."""
        ...

    def describe(self) -> str:
        """Where the data is, without secrets (a path, or host, port and database)."""
        ...

    async def pending(self) -> Sequence[Step]:
        """The schema steps the database lacks."""
        ...

    async def migrate(self) -> Sequence[Step]:
        """Apply them (each in its own transaction); returns what was applied."""
        ...


class StorageError(Exception):
    """Base of the storage seam's own errors."""


class StorageConfigError(StorageError, ValueError):
    """The ``[storage]`` settings cannot be used (no DSN, an unknown engine...)."""


class StorageFailedError(StorageError):
    """The server refused a transaction for a reason that is not the data's (a missing table,
    a permission, an internal error): the holder fails and is restarted, nothing is acked."""


class PendingMigrationsError(StorageError):
    """``[storage] migrate = "check"`` and the database is behind this binary's schema."""


class Applied(NamedTuple):
    """One schema step as the schema table records it."""

    version: int
    name: str
    applied_ms: int
