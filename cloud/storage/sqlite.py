"""The SQLite engine: one file (``readings.sqlite3`` in the state directory), the default.

An :class:`~amcp.runtime.database.Database` like every SQLite file of the project: one writer
thread (transactions run in order, ``synchronous=FULL``: a committed batch is on disk before its
ack), read-only readers beside it (WAL), the schema steps of :mod:`cloud.storage.migrations` in
``PRAGMA user_version`` and in the schema table.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from amcp.runtime.database import Database, Schema, connect
from cloud.storage import migrations
from cloud.storage.engine import Dialect, OnOpen, PendingMigrationsError, Row

T = TypeVar("T")


class SqliteTx:
    dialect: Dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> int:
        before = self.conn.total_changes
        self.conn.executemany(sql, rows)
        return self.conn.total_changes - before

    def insert_new(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]
    ) -> int:
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        return self.executemany(
            f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING",  # noqa: S608
            rows,
        )

    def script(self, sql: str) -> None:
        for statement in sql.split(";"):
            if statement.strip():
                self.conn.execute(statement)


def _step(step: migrations.Step, conn: sqlite3.Connection) -> None:
    migrations.apply(SqliteTx(conn), step)


SCHEMA = Schema("cloud store", tuple(functools.partial(_step, s) for s in migrations.STEPS))


def file_version(path: Path) -> int:
    """The schema version of a store file (0 for a new or empty one)."""
    if not path.exists():
        return 0
    with contextlib.closing(connect(path, readonly=True)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


class SqliteEngine:
    name: Dialect = "sqlite"

    def __init__(self, path: Path, *, on_open: OnOpen = "migrate", readers: int = 2) -> None:
        """``on_open="check"``: refuse to open a file behind this binary's schema
        (:class:`PendingMigrationsError`) instead of upgrading it."""
        self.path = path
        self.on_open = on_open
        self._db = Database(path, name="cloud store", schema=SCHEMA, readers=readers)

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    async def pending(self) -> list[migrations.Step]:
        """The schema steps this file lacks (the file is not opened for writing)."""
        return list(migrations.STEPS[file_version(self.path) :])

    async def migrate(self) -> list[migrations.Step]:
        """Apply the steps this file lacks; returns them."""
        pending = await self.pending()
        if self._db.is_open:
            return []  # open() migrated it
        await self._db.open()
        await self._db.close()
        return pending

    async def open(self) -> None:
        if self.on_open == "check" and (pending := await self.pending()):
            raise PendingMigrationsError(
                f"{self.path}: schema steps {[s.version for s in pending]} are not applied; "
                "run `cybernetic cloud migrate`"
            )
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def held(self) -> None:
        await self._db.held()

    async def write(self, fn: Callable[[SqliteTx], T]) -> T:
        return await self._db.write(lambda conn: fn(SqliteTx(conn)))

    async def read(self, fn: Callable[[SqliteTx], T]) -> T:
        return await self._db.read(lambda conn: fn(SqliteTx(conn)))
