"""The one SQLite seam: the stores a supervisor restarts can be closed and opened again on
the same object, and the Database class runs setup, writes in order, reads beside writes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from amcp.runtime.database import Database, DatabaseClosedError
from amcp.runtime.storage import transaction
from amcp.store import Store
from amcp.wire.telemetry import Reading
from cloud.readings import ReadingStore, count_readings
from gateway.outbox import Outbox, OutboxSettings


def _setup(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")


async def test_writes_run_in_order_reads_see_commits_and_reopen_works(tmp_path: Path) -> None:
    db = Database(tmp_path / "d.sqlite3", name="test", setup=_setup)
    for _ in range(2):  # opened, closed and opened again: the threads are made on open
        await db.open()

        def insert(n: int):
            def run(conn: sqlite3.Connection) -> None:
                with transaction(conn):
                    conn.execute("INSERT INTO t VALUES (?)", (n,))

            return run

        await asyncio.gather(*(db.write(insert(n)) for n in range(50)))
        rows = await db.read(lambda c: [r[0] for r in c.execute("SELECT n FROM t")])
        assert rows[-50:] == list(range(50))
        await db.close()
    with pytest.raises(DatabaseClosedError):
        await db.write(lambda c: None)


async def test_a_failed_write_rolls_back_and_the_next_one_works(tmp_path: Path) -> None:
    db = Database(tmp_path / "d.sqlite3", name="test", setup=_setup)
    await db.open()

    def bad(conn: sqlite3.Connection) -> None:
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await db.write(bad)
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 0
    await db.write(lambda c: c.execute("INSERT INTO t VALUES (2)"))
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 1
    await db.close()


async def test_a_setup_that_fails_leaves_the_database_closed_and_openable(tmp_path: Path) -> None:
    calls = []

    def setup(conn: sqlite3.Connection) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("schema too new")
        _setup(conn)

    db = Database(tmp_path / "d.sqlite3", name="test", setup=setup)
    with pytest.raises(RuntimeError, match="too new"):
        await db.open()
    assert not db.is_open
    await db.open()
    await db.close()


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
        reading = Reading("d", "b", round_ + 1, 1, {"v": round_})
        assert await outbox.append([reading]) == 1
        assert await readings.store("gw", [reading], [], 1) == (1, 0)
        await store.put("ns", f"k{round_}", b"v")
        assert outbox.snapshot().rows == round_ + 1
        assert len(await store.items("ns")) == round_ + 1
        await outbox.close()
        await readings.close()
        await store.close()
    assert count_readings(tmp_path / "r.sqlite3") == 3
