"""The LWW map's rules one by one: idempotence, tie-breaks, watermarks, chunking, schema."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from amcp.store import (
    ClockSkewError,
    InvalidRowError,
    LWWStore,
    Row,
    SchemaTooNewError,
    SiteMismatchError,
    StoreClosedError,
    UnknownPeerError,
    ValueTooLargeError,
    decode_changes,
    decode_rows,
    encode_changes,
    encode_rows,
    reads,
)
from amcp.store import schema as schema_module
from amcp.store.hlc import HybridClock, pack

T0 = 1_800_000_000_000


class Wall:
    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def open_store(path: Path, site: str, wall: Wall | None = None, **kw: object) -> LWWStore:
    return LWWStore(path / f"{site}.db", site, wall_ms=wall or Wall(), **kw)  # type: ignore[arg-type]


def test_hlc_is_monotonic_and_absorbs_remote_clocks() -> None:
    wall = Wall()
    clock = HybridClock(wall)
    a = clock.now()
    wall.ms -= 5_000  # the wall clock steps back
    b = clock.now()
    assert b > a
    clock.observe(pack(T0 + 30_000, 7))
    assert clock.now() > pack(T0 + 30_000, 7)
    assert clock.too_far_ahead(pack(wall.ms + 61_000))
    assert not clock.too_far_ahead(pack(wall.ms + 59_000))


def test_applying_a_batch_twice_equals_once(tmp_path: Path) -> None:
    a, b = open_store(tmp_path, "a"), open_store(tmp_path, "b")
    a.write([("n", "x", b"1"), ("n", "y", None), ("n", "z", b"3" * 40_000)])
    changes = a.changes_since(0)
    b.merge(changes.rows, changes.chunks)
    once, version = b.canonical_dump(), b.version
    assert b.merge(changes.rows, changes.chunks) == []
    assert b.canonical_dump() == once
    assert b.version >= version
    assert b.changes_since(version).rows == []


def test_equal_clocks_are_broken_by_site_in_any_order(tmp_path: Path) -> None:
    rows = [Row("n", "k", b"from-a", pack(T0), "a"), Row("n", "k", b"from-b", pack(T0), "b")]
    one, two = open_store(tmp_path, "one"), open_store(tmp_path, "two")
    one.merge(rows)
    two.merge(rows[::-1])
    two.merge(rows)
    assert one.get("n", "k") == two.get("n", "k") == b"from-b"
    assert one.canonical_dump() == two.canonical_dump()


def test_a_delete_is_a_row_that_wins_by_the_same_rule(tmp_path: Path) -> None:
    s = open_store(tmp_path, "s")
    s.put("n", "k", b"v")
    change = s.delete("n", "k")
    assert change.deleted
    assert s.get("n", "k") is None
    s.merge([Row("n", "k", b"old", change.hlc - 1, "s")])
    assert s.get("n", "k") is None
    s.merge([Row("n", "k", b"new", change.hlc + 1, "s")])
    assert s.get("n", "k") == b"new"


def test_clock_too_far_ahead_refuses_the_whole_batch(tmp_path: Path) -> None:
    wall = Wall()
    s = open_store(tmp_path, "s", wall, max_ahead_ms=1_000)
    rows = [Row("n", "ok", b"1", pack(T0), "r"), Row("n", "late", b"2", pack(T0 + 5_000), "r")]
    with pytest.raises(ClockSkewError) as err:
        s.merge(rows)
    assert (err.value.key, err.value.site, err.value.max_ahead_ms) == ("late", "r", 1_000)
    assert s.get("n", "ok") is None
    wall.ms += 4_500  # our clock catches up: the same batch is accepted
    s.merge(rows)
    assert s.items("n") == {"ok": b"1", "late": b"2"}


def test_malformed_rows_are_refused(tmp_path: Path) -> None:
    s = open_store(tmp_path, "s", max_value_bytes=10)
    with pytest.raises(InvalidRowError, match="empty site"):
        s.merge([Row("n", "k", b"v", pack(T0), "")])
    with pytest.raises(InvalidRowError, match="manifest"):
        s.merge([Row("n", "k", b"short", pack(T0), "r", chunks=2)])
    with pytest.raises(ValueTooLargeError):
        s.put("n", "k", b"x" * 11)


def test_storage_does_not_grow_with_overwrites(tmp_path: Path) -> None:
    s = open_store(tmp_path, "s", chunk_bytes=1024)
    for i in range(300):
        s.put("n", "k", bytes([i % 256]) * 3000)  # chunked: 3 chunks each time
    s.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = s.connection.execute("PRAGMA page_count").fetchone()[0]
    for i in range(1500):
        s.put("n", "k", bytes([i % 256]) * 3000)
    s.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert s.connection.execute("PRAGMA page_count").fetchone()[0] <= pages
    assert s.connection.execute("SELECT count(*) FROM map").fetchone()[0] == 1
    assert s.connection.execute("SELECT count(*) FROM chunks").fetchone()[0] == 3


def test_chunked_values_are_never_half_visible(tmp_path: Path) -> None:
    a = open_store(tmp_path, "a", chunk_bytes=100)
    b = open_store(tmp_path, "b", chunk_bytes=100)
    a.put("n", "big", b"A" * 250)
    first = a.changes_since(0)
    b.merge(first.rows, first.chunks)
    value = b"B" * 1000
    a.put("n", "big", value)
    second = a.changes_since(first.version)
    assert len(second.chunks) == 10
    b.merge(second.rows, second.chunks[:4])  # manifest and some chunks: still the old value
    assert b.get("n", "big") == b"A" * 250
    b.merge([], second.chunks[4:9])
    assert b.get("n", "big") == b"A" * 250
    b.merge([], second.chunks[9:])  # the last chunk completes it atomically
    assert b.get("n", "big") == value
    assert b.connection.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
    assert b.connection.execute("SELECT count(*) FROM chunks").fetchone()[0] == 10


def test_a_reader_never_sees_a_half_written_value(tmp_path: Path) -> None:
    writer = open_store(tmp_path, "w", chunk_bytes=64)
    reader = schema_module.connect(tmp_path / "w.db", readonly=True)
    seen: set[bytes | None] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(reads.get(reader, "n", "k"))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(200):
            writer.put("n", "k", bytes([i]) * 640)
    finally:
        stop.set()
        thread.join()
    reader.close()
    assert all(v is None or (len(v) == 640 and len(set(v)) == 1) for v in seen)


def test_watermarks_only_move_forward(tmp_path: Path) -> None:
    s = open_store(tmp_path, "s")
    with pytest.raises(UnknownPeerError):
        s.ack("p", 1)
    s.write([("n", str(i), b"v") for i in range(10)])
    s.hello("p", "db-1")
    s.ack("p", 7)
    s.ack("p", 3)
    assert s.peer("p").acked == 7  # type: ignore[union-attr]
    s.merge([Row("n", "r", b"v", pack(T0), "p")], peer="p", peer_version=20)
    s.merge([Row("n", "q", b"v", pack(T0), "p")], peer="p", peer_version=5)
    assert s.peer("p").received == 20  # type: ignore[union-attr]
    s.ack("p", 10_000)  # never past our own newest version
    assert s.peer("p").acked == s.version  # type: ignore[union-attr]


def test_a_wiped_peer_is_reset_for_a_full_resync(tmp_path: Path) -> None:
    s = open_store(tmp_path, "s")
    assert s.hello("p", "db-1").reset
    s.ack("p", 5)
    again = s.hello("p", "db-1")
    assert not again.reset
    wiped = s.hello("p", "db-2")
    assert wiped.reset
    assert (wiped.acked, wiped.received) == (0, 0)


def test_tombstones_are_collected_after_every_live_peer_acked(tmp_path: Path) -> None:
    wall = Wall()
    s = open_store(tmp_path, "s", wall, peer_horizon_ms=1_000)
    s.put("n", "k", b"v")
    s.delete("n", "k")
    assert s.collect_garbage() == ([], 0)  # no peers known: keep tombstones
    s.hello("fast", "db-f")
    s.hello("slow", "db-s")
    s.ack("fast", s.version)
    assert s.collect_garbage() == ([], 0)
    wall.ms += 2_000
    s.ack("fast", s.version)  # "slow" stays silent past the horizon
    assert s.collect_garbage() == (["slow"], 1)
    assert s.connection.execute("SELECT count(*) FROM map").fetchone()[0] == 0
    assert s.hello("slow", "db-s").reset  # it returns as a stranger: full resync


def test_changes_since_pages_by_bytes_and_skips_the_peers_own_rows(tmp_path: Path) -> None:
    s = open_store(tmp_path, "s")
    s.write([("n", f"k{i}", b"x" * 100) for i in range(50)])
    s.merge([Row("n", "theirs", b"y", pack(T0), "peer")])
    seen: list[str] = []
    version = 0
    while True:
        batch = s.changes_since(version, limit_bytes=1024, exclude_site="peer")
        assert len(encode_changes(batch)) <= 1024 + 200
        seen += [r.key for r in batch.rows]
        assert batch.version > version
        version = batch.version
        if not batch.more:
            break
    assert seen == [f"k{i}" for i in range(50)]
    assert version == s.version


def test_restart_keeps_identity_clock_and_version(tmp_path: Path) -> None:
    wall = Wall()
    s = open_store(tmp_path, "s", wall)
    change = s.put("n", "k", b"v")
    ident, version = s.database_id, s.version
    s.close()
    with pytest.raises(StoreClosedError):
        s.put("n", "k", b"w")
    wall.ms -= 60_000  # the wall clock went back across the restart
    s = open_store(tmp_path, "s", wall)
    assert (s.database_id, s.version) == (ident, version)
    assert s.put("n", "k", b"w").hlc > change.hlc
    s.close()
    with pytest.raises(SiteMismatchError):
        LWWStore(tmp_path / "s.db", "other")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path, "s").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA user_version={schema_module.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNewError) as err:
        open_store(tmp_path, "s")
    assert err.value.found == schema_module.SCHEMA_VERSION + 1


def test_one_small_row_encodes_compactly() -> None:
    row = Row("caps", "gw-1/temp", b"\x01", pack(T0, 3), "gw-1")
    data = encode_rows([row])
    assert len(data) <= 48
    assert decode_rows(data) == [row]


@settings(max_examples=200)
@given(st.binary(max_size=200))
@example(b"\x91\x95\xab" + b"\x00" * 10 + b"\x80")  # invalid UTF-8 in a str: msgspec's own error
def test_decoders_reject_garbage_with_typed_errors(data: bytes) -> None:
    for decode in (decode_rows, decode_changes):
        with contextlib.suppress(msgspec.DecodeError):  # ValidationError is a DecodeError
            decode(data)
