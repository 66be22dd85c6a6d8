"""The one SQLite seam, on real files: the Database class (migrations once and in order, a
newer file refused by name, readers beside a write, a failed write rolled back, a failed file
reopened), and every store a supervisor restarts (or a daemon reopens) closed and opened
again on the same object with what it wrote still there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from amcp.replay import ReplayGuard, Verdict
from amcp.runtime.database import (
    AsyncDatabase,
    Database,
    DatabaseClosedError,
    DatabaseFailedError,
    Schema,
    SchemaTooNewError,
    is_database_failure,
)
from amcp.runtime.storage import StorageFullError
from amcp.store import LWWStore, Store
from amcp.store.errors import SchemaTooNewError as StoreSchemaTooNewError
from amcp.wire import enrol as wire
from amcp.wire.telemetry import Reading
from cloud.enrolment_store import EnrolmentStore, GatewayRecord
from cloud.readings import ReadingStore, count_readings, reading_keys, recorded_readings
from gateway.outbox import Outbox, OutboxSettings

SCHEMA = Schema("test", ("CREATE TABLE t (n INTEGER)",))


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


def _user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


# -- the class ------------------------------------------------------------------------------
async def test_writes_run_in_order_reads_see_commits_and_reopen_works(tmp_path: Path) -> None:
    db = Database(tmp_path / "d.sqlite3", name="test", schema=SCHEMA)
    for round_ in range(2):  # opened, closed and opened again: the threads are made on open
        await db.open()

        def insert(n: int):  # type: ignore[no-untyped-def]
            return lambda conn: conn.execute("INSERT INTO t VALUES (?)", (n,))

        await asyncio.gather(*(db.write(insert(n)) for n in range(50)))
        rows = await db.read(lambda c: [r[0] for r in c.execute("SELECT n FROM t")])
        assert rows == list(range(50)) * (round_ + 1)
        await db.close()
    with pytest.raises(DatabaseClosedError):
        await db.write(lambda c: None)
    with pytest.raises(DatabaseClosedError):
        await db.read(lambda c: None)


async def test_migrations_run_once_each_in_order_and_only_the_new_ones_later(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.sqlite3"
    ran: list[int] = []

    def step(n: int):  # type: ignore[no-untyped-def]
        def run(conn: sqlite3.Connection) -> None:
            ran.append(n)
            # each step sees the one before it committed
            assert conn.execute("PRAGMA user_version").fetchone()[0] == n
            conn.execute(f"CREATE TABLE s{n} (x)")

        return run

    steps = [step(0), "CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1)", step(2)]
    db = Database(path, name="test", schema=Schema("test", steps))
    await db.open()
    await db.close()
    await db.open()  # nothing to do the second time
    await db.close()
    sync = Database(path, name="test", schema=Schema("test", steps))
    sync.open_sync()
    sync.close_sync()
    assert ran == [0, 2]
    assert _user_version(path) == 3
    # a newer binary adds a step at the end: only that one runs
    newer = Database(path, name="test", schema=Schema("test", [*steps, step(3)]))
    await newer.open()
    assert await newer.read(_count) == 1
    await newer.close()
    assert ran == [0, 2, 3]
    assert _user_version(path) == 4


async def test_a_failing_migration_leaves_the_version_before_it(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        raise RuntimeError("step 2 is broken")

    db = Database(path, name="test", schema=Schema("test", ["CREATE TABLE t (n)", broken]))
    with pytest.raises(RuntimeError, match="step 2"):
        await db.open()
    assert not db.is_open
    assert _user_version(path) == 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert names == {"t"}  # the failed step's table was rolled back with it


async def test_a_newer_schema_is_refused_with_a_typed_error_naming_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 7")
    db = Database(path, name="test", schema=SCHEMA)
    with pytest.raises(SchemaTooNewError) as err:
        await db.open()
    assert (err.value.path, err.value.found, err.value.supported) == (str(path), 7, 1)
    assert str(path) in str(err.value)
    assert "test schema 7 is newer" in str(err.value)
    assert not db.is_open
    with pytest.raises(SchemaTooNewError):
        db.open_sync()
    # an owner's own type, still a SchemaTooNewError: the CRDT store's
    with pytest.raises(StoreSchemaTooNewError) as store_err:
        LWWStore(path, "site")
    assert isinstance(store_err.value, SchemaTooNewError)
    assert store_err.value.path == str(path)
    assert _user_version(path) == 7  # untouched


async def test_readers_run_while_a_write_is_in_progress(tmp_path: Path) -> None:
    db = Database(tmp_path / "d.sqlite3", name="test", schema=SCHEMA, readers=2)
    await db.open()
    inside, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        inside.set()
        assert release.wait(10)

    writing = asyncio.ensure_future(db.write(slow))
    assert await asyncio.to_thread(inside.wait, 10)
    # the write holds its transaction open: readers still answer, from the last commit
    assert await asyncio.wait_for(db.read(_count), 5) == 0
    # and two readers run at the same time (each waits for the other inside its read)
    both = threading.Barrier(2, timeout=5)

    def together(conn: sqlite3.Connection) -> int:
        both.wait()
        return _count(conn)

    assert await asyncio.gather(db.read(together), db.read(together)) == [0, 0]
    assert not writing.done()
    release.set()
    await writing
    assert await db.read(_count) == 1
    await db.close()


async def test_a_failed_write_rolls_back_and_the_next_one_works(tmp_path: Path) -> None:
    db = Database(tmp_path / "d.sqlite3", name="test", schema=SCHEMA)
    await db.open()

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await db.write(bad)
    assert await db.read(_count) == 0
    await db.write(lambda c: c.execute("INSERT INTO t VALUES (2)"))
    assert await db.read(_count) == 1
    assert not db.failed.is_set()  # the caller's error, not the file's
    await db.close()


async def test_a_full_disk_is_storage_full_and_not_a_failed_database(tmp_path: Path) -> None:
    db = Database(tmp_path / "d.sqlite3", name="test", schema=SCHEMA)
    await db.open()
    pages = await db.call(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await db.call(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))

    def big(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(4000),) for _ in range(20)])

    with pytest.raises(StorageFullError):
        await db.write(big)
    assert not db.failed.is_set()
    await db.call(lambda c: c.execute("PRAGMA max_page_count = 100000"))
    await db.write(big)
    assert await db.read(_count) == 20
    await db.close()


async def test_a_failure_of_the_file_makes_held_raise_until_reopened(tmp_path: Path) -> None:
    db = Database(tmp_path / "d.sqlite3", name="test", schema=SCHEMA)
    await db.open()
    holder = asyncio.ensure_future(db.held())
    await asyncio.sleep(0)
    assert not holder.done()

    def io_error(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        raise sqlite3.OperationalError("disk I/O error")  # what SQLite says for EIO

    with pytest.raises(sqlite3.OperationalError):
        await db.write(io_error)
    with pytest.raises(DatabaseFailedError, match="disk I/O error"):
        await asyncio.wait_for(holder, 5)
    # the holding child's supervisor closes and opens the same object: healthy again
    await db.close()
    await db.open()
    assert not db.failed.is_set()
    assert db.failure is None
    await db.write(lambda c: c.execute("INSERT INTO t VALUES (2)"))
    assert await db.read(_count) == 1
    await db.close()


async def test_a_setup_that_fails_leaves_the_database_closed_and_openable(tmp_path: Path) -> None:
    calls = []

    def setup(conn: sqlite3.Connection) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("cannot load")

    db = Database(tmp_path / "d.sqlite3", name="test", schema=SCHEMA, setup=setup)
    with pytest.raises(RuntimeError, match="cannot load"):
        await db.open()
    assert not db.is_open
    await db.open()
    await db.close()


def test_an_in_thread_owner_opens_closes_and_opens_again(tmp_path: Path) -> None:
    db = Database(tmp_path / "d.sqlite3", name="test", schema=SCHEMA, synchronous="NORMAL")
    for n in range(2):
        conn = db.open_sync()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        conn.execute("INSERT INTO t VALUES (?)", (n,))
        db.close_sync()
        with pytest.raises(DatabaseClosedError):
            _ = db.connection
    assert _count(db.open_sync()) == 2
    db.close_sync()


def test_the_async_seam_is_typed() -> None:
    """What the next issue puts PostgreSQL behind: the stores call only these."""
    seam: AsyncDatabase[sqlite3.Connection] = Database(None, name="t")
    assert hasattr(seam, "write")
    assert hasattr(seam, "read")


# -- every store, closed and opened again on the same object ---------------------------------
async def test_the_stores_a_supervisor_restarts_reopen_on_the_same_object(
    tmp_path: Path,
) -> None:
    """'cannot schedule new futures after shutdown': the outbox, the reading store and the
    CRDT store shut their thread pools in close(), and the supervisor restarts the same
    objects, so every restart after a failure failed again."""
    outbox = Outbox(tmp_path / "o.sqlite3", OutboxSettings())
    readings = ReadingStore(tmp_path / "r.sqlite3")
    store = Store(tmp_path / "s.sqlite3", site="gw")
    for round_ in range(3):
        await outbox.open()
        await readings.open()
        await store.open()
        # what the rounds before wrote is read back
        assert outbox.snapshot().rows == round_
        assert await readings.count() == round_
        assert sorted(await store.items("ns")) == [f"k{n}" for n in range(round_)]
        reading = Reading("d", "b", round_ + 1, 1, {"v": round_})
        assert await outbox.append([reading]) == 1
        assert await readings.store("gw", [reading], [], 1) == (1, 0)
        await store.put("ns", f"k{round_}", b"v")
        await outbox.close()
        await readings.close()
        await store.close()
    await outbox.open()
    batch = await outbox.next_batch(10)
    assert batch is not None
    assert len(batch.bodies) == 3
    await outbox.close()
    assert count_readings(tmp_path / "r.sqlite3") == 3
    assert sorted(k[2] for k in reading_keys(tmp_path / "r.sqlite3")) == [1, 2, 3]
    assert [r.seq for r in recorded_readings(tmp_path / "r.sqlite3")] == [1, 2, 3]


def test_the_replay_guard_reopens_on_the_same_object_and_still_refuses_replays(
    tmp_path: Path,
) -> None:
    """The guard is held by the link (GatewayLink, CloudLinks), opened with it and closed
    when the daemon exits, not by a supervised child; it reopens all the same."""
    now = 1_800_000_000_000
    guard = ReplayGuard(tmp_path / "replay.sqlite3")
    for epoch in (1, 2):
        nonce = os.urandom(16)
        assert guard.check("hm:a", now, nonce, None, None, now) is Verdict.ACCEPT
        assert guard.check("hm:c", now, b"", epoch, 5, now) is Verdict.ACCEPT
        assert guard.admit_version(f"caps{epoch}", 3)
        guard.close()
        guard.open()
        assert guard.floor_ms == 0  # closed cleanly: nothing refused wholesale
        assert guard.check("hm:a", now, nonce, None, None, now) is Verdict.REPLAY
        assert guard.check("hm:c", now, b"", epoch, 5, now) is Verdict.REPLAY
        assert not guard.admit_version(f"caps{epoch}", 3)
    guard.close()
    guard.close()  # closing twice is harmless


def test_the_enrolment_store_reopens_on_the_same_object(tmp_path: Path) -> None:
    path = tmp_path / "pki" / "enrolment.sqlite3"
    store = EnrolmentStore(path)
    token = wire.BootstrapToken.generate()
    store.add_token(token, "gw-1", expires_ms=2**40)
    rec = GatewayRecord("gw-1", b"k" * 32, "01", 2**40, 1, 0, 1, None)
    store.put_gateway(rec)
    store.close()
    store.open()
    assert store.gateway("gw-1") == rec
    found = store.token(token.token_id)
    assert found is not None
    assert found[0].gateway == "gw-1"
    assert store.consume(token.token_id, "req-1", at_ms=1)
    store.close()
    store.open()
    assert not store.consume(token.token_id, "req-2", at_ms=2)  # used stays used
    store.close()
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_lock_held_by_another_process_is_not_a_failure_of_the_file(
    tmp_path: Path,
) -> None:
    """A CLI holding a write lock past the busy timeout costs that write, not a reopen."""
    path = tmp_path / "locked.db"
    db = Database(path, name="locked", schema=SCHEMA)
    await db.open()
    await db.call(lambda c: c.execute("PRAGMA busy_timeout=50"))  # not the 10 s default
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the other process's write lock
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked") as caught:
            await db.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        assert not is_database_failure(caught.value)
        assert not db.failed.is_set()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await db.write(lambda c: c.execute("INSERT INTO t VALUES (2)"))  # fine once released
    await db.close()
