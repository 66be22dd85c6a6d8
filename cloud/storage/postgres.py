"""The PostgreSQL engine: psycopg 3 connection pools, transactions retried, a standby DSN.

``write(fn)`` and ``read(fn)`` run ``fn`` on a worker thread with a pooled connection, in one
transaction. What happens when the server is not there:

- **A lost or refused connection** (the server restarting, a network cut, a pool that cannot
  connect within ``connect_timeout_s``) is retried, with backoff and jitter up to
  ``retry_max_s``, for as long as it takes: the caller waits (cloud ingest acknowledges nothing
  meanwhile, so the broker keeps the batches) and its transaction runs again from the start.
  The outage is logged once when it starts and once when it ends, with its length.
- **A standby DSN**, when configured, takes over as soon as the active DSN fails to connect;
  the engine stays on it until it fails in turn (no flapping back while the old primary is
  half up). A server that answers read-only (a hot standby not yet promoted) counts as
  unreachable for writes.
- **Serialization failures and deadlocks** (two cloud workers updating the same device rows)
  roll back and run again at once, a few times.
- **A full disk** on the server is :class:`~amcp.runtime.storage.StorageFullError`, which cloud
  ingest waits out as it does for SQLite.

An ambiguous commit (the connection lost while ``COMMIT`` was in flight) is retried too: every
write of the cloud is idempotent by key (readings by identity, upserts), or at least once where
documented (events).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from prometheus_client import CollectorRegistry, Counter, Gauge
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from amcp.runtime.storage import StorageFullError
from cloud.storage import migrations
from cloud.storage.engine import (
    Dialect,
    OnOpen,
    PendingMigrationsError,
    Row,
    StorageError,
    StorageFailedError,
)

log = logging.getLogger(__name__)
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # each failed connect: our outage log
T = TypeVar("T")
MIGRATION_LOCK = 0x43594245  # "CYBE": one migrator at a time across cloud workers
SERIALIZATION_RETRIES = 8


class StorageConflictError(StorageError):
    """A transaction kept losing serialization conflicts or deadlocks."""


@functools.lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """``?`` placeholders (the SQL both engines share) as psycopg's ``%s``."""
    return sql.replace("?", "%s")


class PgTx:
    dialect: Dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        cur = self.conn.execute(_pg(sql), params or None)
        return cur.fetchall() if cur.description else []

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> int:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(sql), rows)
            return max(cur.rowcount, 0)

    def script(self, sql: str) -> None:
        self.conn.execute(sql.encode())  # several statements, no parameters

    def insert_new(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]
    ) -> int:
        """``COPY`` into a per-connection staging table (emptied at commit), then one
        ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: about three times the rate of
        ``executemany`` (psycopg writes COPY rows in C; array parameters are built in Python)."""
        if not rows:
            return 0
        stage = f"{table}_in"
        names = ", ".join(f'"{c}"' for c in columns)
        self.conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS".encode()
        )
        with self.conn.cursor() as cur:
            with cur.copy(f"COPY {stage} ({names}) FROM STDIN".encode()) as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(
                f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "  # noqa: S608
                "ON CONFLICT DO NOTHING".encode()
            )
            count = max(cur.rowcount, 0)
            cur.execute(f"DELETE FROM {stage}".encode())  # noqa: S608 - for the next call
        return count


def redact(dsn: str) -> str:
    """A DSN without its password: host, port, database and user (for logs and status)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql:(unparsable DSN)"
    shown = {k: parts[k] for k in ("host", "port", "dbname", "user") if k in parts}
    return "postgresql:" + " ".join(f"{k}={v}" for k, v in shown.items())


class _UnreachableError(Exception):
    """One attempt could not reach a writable server."""


class _ConflictError(Exception):
    """One attempt lost a serialization conflict or a deadlock: run it again."""


class PostgresEngine:
    name: Dialect = "postgresql"

    def __init__(
        self,
        dsn: str,
        *,
        standby_dsn: str = "",
        pool_size: int = 4,
        connect_timeout_s: float = 2.0,
        retry_max_s: float = 5.0,
        on_open: OnOpen = "migrate",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.dsns = [dsn, *([standby_dsn] if standby_dsn else [])]
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self.retry_max_s = retry_max_s
        self.on_open = on_open
        self.active = 0
        """Index in :attr:`dsns` of the server in use (0: the primary)."""
        self._pools: list[ConnectionPool[psycopg.Connection[Any]]] = []
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._down_since: float | None = None
        self._prepared: set[int] = set()
        """Servers (by index in :attr:`dsns`) whose schema was migrated or checked: each
        server is brought up to date the first time it is used, the standby included."""
        self.retries = Counter(
            "cybernetic_storage_retries",
            "Storage transactions run again, by reason (unreachable, conflict)",
            ["reason"],
            registry=registry,
        )
        self.failovers = Counter(
            "cybernetic_storage_failovers",
            "Switches between the primary and the standby DSN",
            registry=registry,
        )
        Gauge(
            "cybernetic_storage_reachable",
            "1 while the storage server answers (0 during an outage)",
            registry=registry,
        ).set_function(lambda: float(self._down_since is None))

    def describe(self) -> str:
        return redact(self.dsns[self.active])

    # -- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Make the pools (connecting in the background: a server that is down is waited for
        by the first transaction, not here), then bring the schema up to date, or check it."""
        if self._threads is not None:
            return
        self._threads = concurrent.futures.ThreadPoolExecutor(
            self.pool_size + 1, thread_name_prefix="storage"
        )
        self._pools = [
            ConnectionPool(
                dsn,
                min_size=1,
                max_size=self.pool_size + 1,
                kwargs={"autocommit": True, "connect_timeout": max(1, int(self.connect_timeout_s))},
                open=False,
                name=f"storage-{i}",
            )
            for i, dsn in enumerate(self.dsns)
        ]
        for pool in self._pools:
            pool.open(wait=False)
        self._prepared = set()
        if self.on_open != "leave":
            try:  # waits for the server (nothing can be stored before its schema is there)
                await self.read(lambda _: None)
            except PendingMigrationsError:
                await self.close()
                raise

    async def close(self) -> None:
        pools, self._pools = self._pools, []
        threads, self._threads = self._threads, None
        for pool in pools:
            await asyncio.to_thread(pool.close)
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)

    async def held(self) -> None:
        """Never fails: an unreachable server is waited out inside each transaction."""
        await asyncio.Event().wait()

    # -- schema -------------------------------------------------------------------------------
    async def pending(self) -> list[migrations.Step]:
        done = await self.read(migrations.applied)
        current = max((a.version for a in done), default=0)
        return list(migrations.STEPS[current:])

    async def migrate(self) -> list[migrations.Step]:
        """Apply the steps the active server lacks (``cybernetic cloud migrate``)."""
        return await self._retrying(self._migrate_sync)

    def _migrate_sync(self, index: int) -> list[migrations.Step]:
        """Each pending step in its own transaction under an advisory lock (several workers
        may start at once: one migrates, the others find it done)."""
        ran: list[migrations.Step] = []
        for step in migrations.STEPS:

            def one(tx: PgTx, step: migrations.Step = step) -> bool:
                tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
                current = max((a.version for a in migrations.applied(tx)), default=0)
                if current >= step.version:
                    return False
                migrations.apply(tx, step)
                return True

            if self._attempt(index, one, readonly=False):
                ran.append(step)
                log.info(
                    "storage schema step applied",
                    extra={"version": step.version, "step": step.name, "at": self.describe()},
                )
        return ran

    def _prepare(self, index: int) -> None:
        """Bring a server's schema up to date, or check it, before its first transaction."""
        if self.on_open == "migrate":
            self._migrate_sync(index)
        elif self.on_open == "check":
            done = self._attempt(index, migrations.applied, readonly=True)
            current = max((a.version for a in done), default=0)
            if current < migrations.VERSION:
                steps = [s.version for s in migrations.STEPS[current:]]
                raise PendingMigrationsError(
                    f"{redact(self.dsns[index])}: schema steps {steps} are not applied; "
                    "run `cybernetic cloud migrate`"
                )
        self._prepared.add(index)

    # -- transactions ---------------------------------------------------------------------------
    async def write(self, fn: Callable[[PgTx], T]) -> T:
        return await self._run(fn, readonly=False)

    async def read(self, fn: Callable[[PgTx], T]) -> T:
        return await self._run(fn, readonly=True)

    async def _run(self, fn: Callable[[PgTx], T], *, readonly: bool) -> T:
        return await self._retrying(lambda index: self._attempt(index, fn, readonly=readonly))

    async def _retrying(self, job: Callable[[int], T]) -> T:
        """``job(index)`` on a worker thread against the active server, again and again
        while the server cannot be reached or the transaction loses a conflict."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        conflicts = 0
        tried: set[int] = set()
        while True:
            threads = self._threads
            if threads is None:
                raise RuntimeError("storage engine is not open")
            index = self.active
            try:
                if index not in self._prepared and self.on_open != "leave":
                    await loop.run_in_executor(threads, self._prepare, index)
                result = await loop.run_in_executor(threads, job, index)
            except _UnreachableError as exc:
                self.retries.labels("unreachable").inc()
                tried.add(index)
                self._outage(index, exc)
                if self.active not in tried:
                    continue  # the standby (or back to the primary): try it at once
                tried.clear()
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.retry_max_s)
                continue
            except _ConflictError:
                conflicts += 1
                if conflicts > SERIALIZATION_RETRIES:
                    raise StorageConflictError(
                        f"transaction lost {conflicts} conflicts in a row"
                    ) from None
                self.retries.labels("conflict").inc()
                continue
            self._recovered()
            return result

    def _attempt(self, index: int, fn: Callable[[PgTx], T], readonly: bool) -> T:
        pool = self._pools[index]
        try:
            with pool.connection(timeout=self.connect_timeout_s) as conn, conn.transaction():
                if readonly:
                    conn.execute(b"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return fn(PgTx(conn))
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as exc:
            raise _ConflictError(str(exc)) from exc
        except psycopg.errors.DiskFull as exc:
            raise StorageFullError(str(exc)) from exc
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise _UnreachableError(f"read-only server: {exc}") from exc
        except PoolTimeout as exc:
            raise _UnreachableError(f"no connection within {self.connect_timeout_s:g}s") from exc
        except psycopg.OperationalError as exc:
            if isinstance(exc, psycopg.errors.QueryCanceled):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise _UnreachableError(first) from exc
        except (psycopg.DataError, psycopg.IntegrityError):
            raise  # the batch's own data: the caller refuses that batch
        except psycopg.Error as exc:
            raise StorageFailedError(f"{redact(self.dsns[index])}: {exc}") from exc

    def _outage(self, index: int, exc: _UnreachableError) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error(
                "storage unreachable: transactions wait and retry",
                extra={"at": redact(self.dsns[index]), "error": str(exc)},
            )
        if len(self.dsns) > 1 and self.active == index:
            self.active = (index + 1) % len(self.dsns)
            self.failovers.inc()
            log.warning(
                "storage failing over",
                extra={"from": redact(self.dsns[index]), "to": self.describe()},
            )

    def _recovered(self) -> None:
        if self._down_since is not None:
            took = time.monotonic() - self._down_since
            self._down_since = None
            log.warning(
                "storage reachable again",
                extra={"at": self.describe(), "outage_s": round(took, 1)},
            )


@contextlib.contextmanager
def connection(dsn: str) -> Any:
    """One plain connection (tools, tests, benchmarks' reference writes)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn
