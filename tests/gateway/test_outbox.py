"""The outbox: durable append, batches with stable ids, acks, overflow policies, expiry."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import msgspec
import pytest

from amcp.runtime.database import SchemaTooNewError
from amcp.runtime.storage import StorageFullError
from amcp.wire.telemetry import EventRecord, Reading
from gateway.outbox import (
    _V1 as V1_SCHEMA,
)
from gateway.outbox import (
    EVENT,
    SCHEMA_VERSION,
    Outbox,
    OutboxError,
    OutboxSettings,
    Overflow,
)


def _readings(n: int, start: int = 1, device: str = "d") -> list[Reading]:
    return [Reading(device, "b", s, 1000 + s, {"v": s}) for s in range(start, start + n)]


def _seqs(bodies: list[bytes]) -> list[int]:
    return [msgspec.msgpack.decode(b, type=Reading).seq for b in bodies]


async def _outbox(path: Path, **kw: object) -> Outbox:
    drops: list[tuple[str, int]] = []
    ob = Outbox(path, OutboxSettings(**kw), on_drop=lambda _k, r, n: drops.append((r, n)))  # type: ignore[arg-type]
    ob.drops_seen = drops  # type: ignore[attr-defined]
    await ob.open()
    return ob


async def test_unacknowledged_rows_come_back_after_a_restart_and_none_twice(
    tmp_path: Path,
) -> None:
    ob = await _outbox(tmp_path / "o.db")
    await ob.append(_readings(25))
    b1 = await ob.next_batch(10)
    b2 = await ob.next_batch(10)
    assert b1 is not None
    assert b2 is not None
    assert _seqs(b1.bodies) == list(range(1, 11))
    assert _seqs(b2.bodies) == list(range(11, 21))
    # until acknowledged, a batch is re-sent with the same id (after a reconnect)
    assert [b.batch_id for b in await ob.open_batches()] == [b1.batch_id, b2.batch_id]
    assert await ob.ack(b1.batch_id) == 10
    assert [b.batch_id for b in await ob.open_batches()] == [b2.batch_id]
    await ob.close()

    # a restart forgets batches, never rows: what was not acknowledged is batched again
    ob = await _outbox(tmp_path / "o.db")
    assert await ob.open_batches() == []
    b3 = await ob.next_batch(100)
    assert b3 is not None
    assert _seqs(b3.bodies) == list(range(11, 26))
    assert ob.snapshot().rows == 15
    assert await ob.ack(b3.batch_id) == 15
    assert await ob.ack(b3.batch_id) == 0  # a repeated ack is harmless
    assert ob.snapshot().rows == 0
    assert ob.snapshot().bytes == 0
    assert await ob.next_batch(10) is None
    await ob.close()


async def test_drop_oldest_makes_room_and_counts(tmp_path: Path) -> None:
    one = len(msgspec.msgpack.encode(_readings(1)[0]))
    ob = await _outbox(tmp_path / "o.db", max_bytes=one * 10, overflow=Overflow.DROP_OLDEST)
    assert await ob.append(_readings(8)) == 8
    assert await ob.append(_readings(5, start=9)) == 5
    assert ob.snapshot().rows == 10
    assert ob.snapshot().bytes <= one * 10
    b = await ob.next_batch(100)
    assert b is not None
    assert _seqs(b.bodies) == list(range(4, 14))  # the three oldest went
    assert await ob.drop_counts() == {"overflow_oldest": 3}
    assert ob.drops_seen == [("overflow_oldest", 3)]  # type: ignore[attr-defined]
    await ob.close()


async def test_drop_oldest_keeps_the_newest_of_a_batch_larger_than_the_cap(
    tmp_path: Path,
) -> None:
    one = len(msgspec.msgpack.encode(_readings(1)[0]))
    ob = await _outbox(tmp_path / "o.db", max_bytes=one * 10, overflow=Overflow.DROP_OLDEST)
    assert await ob.append(_readings(4)) == 4
    # one ingest batch of 15 cannot fit whatever goes: all older rows and its own oldest go
    assert await ob.append(_readings(15, start=5)) == 10
    b = await ob.next_batch(100)
    assert b is not None
    assert _seqs(b.bodies) == list(range(10, 20))
    assert await ob.drop_counts() == {"overflow_oldest": 9}
    await ob.close()


async def test_refuse_new_keeps_the_oldest_and_counts(tmp_path: Path) -> None:
    one = len(msgspec.msgpack.encode(_readings(1)[0]))
    ob = await _outbox(tmp_path / "o.db", max_bytes=one * 10, overflow=Overflow.REFUSE_NEW)
    assert await ob.append(_readings(8)) == 8
    assert await ob.append(_readings(5, start=9)) == 2
    b = await ob.next_batch(100)
    assert b is not None
    assert _seqs(b.bodies) == list(range(1, 11))
    assert await ob.drop_counts() == {"overflow_new": 3}
    await ob.close()


async def test_rows_older_than_max_age_expire_and_are_counted(tmp_path: Path) -> None:
    now = [1_000_000]
    ob = Outbox(tmp_path / "o.db", OutboxSettings(max_age=60), now_ms=lambda: now[0])
    await ob.open()
    await ob.append(_readings(3))
    now[0] += 30_000
    await ob.append(_readings(2, start=4))
    now[0] += 40_000  # the first three are now 70 s old
    assert await ob.expire() == 3
    assert ob.snapshot().rows == 2
    assert await ob.drop_counts() == {"expired": 3}
    await ob.close()


async def test_dead_letters_are_bounded(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", OutboxSettings(), dead_letter_max_rows=5)
    await ob.open()
    for i in range(4):
        await ob.dead_letter(
            [(f"d{i}", "malformed", "bad", b"x"), (f"e{i}", "oversized", "big", b"y")]
        )
    rows = await ob.dead_letters(100)
    assert len(rows) == 5
    assert rows[0] == ("e3", "oversized", "big")
    await ob.close()


async def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    ob = await _outbox(tmp_path / "o.db")
    await ob.close()
    with sqlite3.connect(tmp_path / "o.db") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(OutboxError, match="schema 99 is newer") as err:
        await _outbox(tmp_path / "o.db")
    assert isinstance(err.value, SchemaTooNewError)
    assert err.value.path == str(tmp_path / "o.db")
    assert str(tmp_path / "o.db") in str(err.value)


async def test_an_outbox_from_before_user_version_is_migrated_in_order(tmp_path: Path) -> None:
    """Outboxes up to schema 4 kept their version in ``meta``; one at version 1 (the first
    release: a batches table, drops without kinds) is taken through every step, keeping its
    rows and counts, and an older gateway still finds the version it refuses in ``meta``."""
    path = tmp_path / "o.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(V1_SCHEMA)
        db.execute("INSERT INTO outbox (added_ms, size, body) VALUES (1, 3, x'010203')")
        db.execute("INSERT INTO drops VALUES ('overflow_new', 7)")
        db.commit()
    ob = await _outbox(path)
    assert ob.snapshot().rows == 1
    assert await ob.drop_counts() == {"overflow_new": 7}
    await ob.append(_readings(2))
    await ob.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        meta = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert meta == (str(SCHEMA_VERSION),)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "batches" not in tables
        assert "recent_commits" in tables


async def test_stats_survive_a_restart(tmp_path: Path) -> None:
    ob = await _outbox(tmp_path / "o.db")
    await ob.append(_readings(7))
    before = ob.snapshot()
    await ob.close()
    ob = await _outbox(tmp_path / "o.db")
    after = ob.snapshot()
    assert (after.rows, after.bytes, after.oldest_ms) == (
        before.rows,
        before.bytes,
        before.oldest_ms,
    )
    await ob.close()


async def test_next_batches_takes_several_and_unbatched_tells_what_waits(tmp_path: Path) -> None:
    ob = await _outbox(tmp_path / "o.db")
    await ob.append(_readings(25))
    assert ob.unbatched == 25
    batches = await ob.next_batches(10, 2)
    assert [_seqs(b.bodies) for b in batches] == [list(range(1, 11)), list(range(11, 21))]
    assert ob.unbatched == 5
    assert [len(b.bodies) for b in await ob.next_batches(10, 5)] == [5]
    assert ob.unbatched == 0
    assert await ob.next_batches(10, 5) == []
    await ob.close()
    ob = await _outbox(tmp_path / "o.db")  # after a restart every unacknowledged row waits
    assert ob.unbatched == 25
    await ob.close()


async def test_drops_count_events_apart_and_never_take_rows_in_flight(tmp_path: Path) -> None:
    """Finding 8: the drop counter counted S2 events as dropped readings, and counted rows
    already handed to the cloud (which may well have stored them) as dropped."""
    size = len(msgspec.msgpack.encode(_readings(1)[0]))
    ob = await _outbox(tmp_path / "o.db", max_bytes=size * 10)
    await ob.append(_readings(4))
    in_flight = await ob.next_batch(4)  # sent, not acknowledged
    assert in_flight is not None
    events = [EventRecord("s2.zombie", 1, f"dev-{i}") for i in range(3)]
    await ob.append_events(events)
    await ob.append(_readings(6, start=5))  # over the cap: the oldest rows not in flight go
    readings_dropped = await ob.drop_counts()
    events_dropped = await ob.drop_counts(EVENT)
    # 13 rows for a cap of 10 (events are smaller): the 3 events were the oldest not in
    # flight, then no reading had to go
    assert events_dropped == {"overflow_oldest": 3}
    assert readings_dropped == {}
    # the batch in flight is intact: its ack deletes exactly its rows
    assert await ob.ack(in_flight.batch_id) == 4
    left = await ob.next_batch(100)
    assert left is not None
    assert _seqs(left.bodies)[-1] == 10
    await ob.close()


async def test_rows_the_cloud_refuses_move_to_the_dead_letter_table(tmp_path: Path) -> None:
    ob = await _outbox(tmp_path / "o.db")
    await ob.append(_readings(5, device="dev-r"))
    batch = await ob.next_batch(5)
    assert batch is not None
    assert await ob.ack(batch.batch_id, {1: "seq: outside 0 to 2**63-1", 3: "values.v: nan"}) == 5
    dead = await ob.dead_letters()
    assert sorted(dead) == [
        ("dev-r", "cloud_refused", "seq: outside 0 to 2**63-1"),
        ("dev-r", "cloud_refused", "values.v: nan"),
    ]
    await ob.append(_readings(2, start=6, device="dev-r"))
    batch = await ob.next_batch(5)
    assert batch is not None
    assert await ob.refuse(batch.batch_id, "malformed") == 2  # a nack for good: all its rows
    assert len(await ob.dead_letters()) == 4
    assert ob.snapshot().rows == 0
    await ob.close()


async def test_a_full_disk_raises_storage_full_and_changes_nothing(tmp_path: Path) -> None:
    """SQLite's own size cap stands in for a full disk here (the end-to-end test fills a real
    filesystem): the error is StorageFullError, not 'cannot rollback', and nothing is lost."""
    ob = await _outbox(tmp_path / "o.db")
    await ob.append(_readings(5))
    pages = ob.db.execute("PRAGMA page_count").fetchone()[0]
    ob.db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StorageFullError):
        await ob.append([Reading("d", "b", 100 + i, 1, {"v": "x" * 5000}) for i in range(20)])
    assert ob.full
    assert ob.snapshot().rows == 5
    ob.db.execute("PRAGMA max_page_count = 1000000")
    await ob.append(_readings(1, start=6))
    assert not ob.full
    batch = await ob.next_batch(100)
    assert batch is not None
    assert _seqs(batch.bodies) == [1, 2, 3, 4, 5, 6]
    await ob.close()


def test_the_outbox_imports_no_other_part_of_the_gateway() -> None:
    """Its settings live with it: through gateway.config it imported the rules and all of S1."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "import sys, gateway.outbox; "
        "print(sorted(m for m in sys.modules if m.startswith('gateway')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['gateway', 'gateway.outbox']"
