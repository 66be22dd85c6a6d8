"""Replay guard internals the Opener tests cannot reach: buffered records, partitioned runs on
disk and their merges, crashes between flushes, the batch API, the keyed hash."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from amcp.replay import Check, ReplayGuard, Verdict
from amcp.replay.store import MERGE_AT, SCHEMA, NonceStore, find_record
from tests.amcp.wire.envelope_support import SetClock

NOW = 1_800_000_000_000
GEN_MS = 90_000


def nonce_items(n: int, sender: str = "hm:a", ts: int = NOW) -> list[Check]:
    return [(sender, ts, os.urandom(16), None, None) for _ in range(n)]


def test_false_positives_in_the_unflushed_buffer_never_reject_fresh_nonces() -> None:
    """A 64-bit filter is saturated at once; nothing is flushed, so every hit is confirmed
    against the in-memory buffer alone."""
    guard = ReplayGuard(None, bloom_bits=64, flush_every=1_000_000)
    fresh = nonce_items(400)
    assert guard.check_many(fresh, NOW) == [Verdict.ACCEPT] * 400
    assert guard.false_positives > 350
    assert guard._store.contains(NOW // GEN_MS, 0, bytes(16)) is False  # nothing on disk yet
    assert set(guard.check_many(fresh, NOW)) == {Verdict.REPLAY}


def test_false_positives_after_flushes_and_merges_never_reject(tmp_path: Path) -> None:
    guard = ReplayGuard(tmp_path / "r.db", bloom_bits=64, flush_every=5)
    fresh = nonce_items(3000)
    assert guard.check_many(fresh, NOW) == [Verdict.ACCEPT] * 3000
    rows = guard._db.execute(
        "SELECT count(*), max(length(records)) FROM nonce_runs GROUP BY part"
    ).fetchall()
    assert max(n for n, _ in rows) < MERGE_AT  # 600 flushes of 5: partitions were merged
    assert max(size for _, size in rows) > 16 * (MERGE_AT - 1)
    assert set(guard.check_many(fresh[::7], NOW)) == {Verdict.REPLAY}
    assert guard.check_many(nonce_items(500), NOW) == [Verdict.ACCEPT] * 500


def test_clean_restart_keeps_every_partition(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    guard = ReplayGuard(path, flush_every=97)
    sent = nonce_items(5000) + nonce_items(50, ts=NOW - GEN_MS)  # two generations
    assert guard.check_many(sent, NOW) == [Verdict.ACCEPT] * len(sent)
    guard.close()
    again = ReplayGuard(path)
    assert again.floor_ms == 0
    assert set(again.check_many(sent, NOW + 1)) == {Verdict.REPLAY}
    assert again.check_many(nonce_items(2000), NOW + 1) == [Verdict.ACCEPT] * 2000


def test_crash_between_flushes_refuses_everything_stamped_before_restart(
    tmp_path: Path,
) -> None:
    """The unflushed tail is lost in a crash; the floor refuses it (and all older envelopes)
    as stamped before the restart, while fresh traffic after the restart is accepted."""

    path = tmp_path / "r.db"
    guard = ReplayGuard(path, flush_every=10)
    flushed, tail = nonce_items(10), nonce_items(7)
    counted: list[Check] = [("hm:c", NOW, b"", 1, c) for c in range(1, 3)]
    assert set(guard.check_many(flushed + tail + counted, NOW)) == {Verdict.ACCEPT}
    # no close: the process died with 7 nonces and 2 counters unflushed
    after = ReplayGuard(path, clock=SetClock(NOW / 1000 + 5))
    assert after.floor_ms == NOW + 5000 + 1
    assert set(after.check_many(flushed + tail + counted, NOW + 5000)) == {Verdict.BEFORE_RESTART}
    later = NOW + 5001
    assert after.check_many(nonce_items(3, ts=later), later) == [Verdict.ACCEPT] * 3
    assert after.check("hm:c", later, b"", 1, 3, later) is Verdict.ACCEPT


def test_store_from_before_partitioned_runs_is_treated_as_unclean(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE nonces (gen INTEGER, digest BLOB, PRIMARY KEY (gen, digest))")
    db.execute("INSERT INTO nonces VALUES (1, ?)", (os.urandom(16),))
    db.commit()
    db.close()

    guard = ReplayGuard(path, clock=SetClock(NOW / 1000))
    assert guard.floor_ms == NOW + 1
    assert (
        guard._db.execute("SELECT name FROM sqlite_master WHERE name='nonces'").fetchone() is None
    )


@settings(max_examples=40)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 11), st.integers(0, 1), st.booleans()),
        min_size=1,
        max_size=120,
    ),
    cuts=st.lists(st.integers(1, 40), max_size=6),
    tiny=st.booleans(),
)
def test_check_many_in_any_batches_equals_an_exact_model(
    plan: list[tuple[int, int, int, bool]], cuts: list[int], tiny: bool
) -> None:
    """Duplicated nonces and counters, across senders and generations, with a forced-hit
    filter or not and frequent flushes: verdicts equal a set model, however it is batched."""
    pool = [os.urandom(16) for _ in range(12)]
    items: list[Check] = []
    for who, idx, gen, counted in plan:
        ts = NOW - gen * GEN_MS
        if counted:
            items.append((f"s{who}", ts, b"", 1, idx + 1))
        else:
            items.append((f"s{who}", ts, pool[idx], None, None))
    guard = ReplayGuard(None, bloom_bits=64 if tiny else None, flush_every=3)
    got: list[Verdict] = []
    start = 0
    for cut in [*cuts, len(items)]:
        got += guard.check_many(items[start : start + cut], NOW)
        start += cut
    got += guard.check_many(items[start:], NOW)
    seen: set[tuple[str, int, bytes, int | None]] = set()
    expected = []
    for sender, ts, nonce, _, counter in items:
        key = (sender, ts // GEN_MS if counter is None else -1, nonce, counter)
        expected.append(Verdict.REPLAY if key in seen else Verdict.ACCEPT)
        seen.add(key)
    assert got == expected


def test_same_nonce_from_two_senders_is_two_messages() -> None:
    guard = ReplayGuard(None)
    nonce = os.urandom(16)
    assert guard.check("hm:a", NOW, nonce, None, None, NOW) is Verdict.ACCEPT
    assert guard.check("hm:b", NOW, nonce, None, None, NOW) is Verdict.ACCEPT
    assert guard.check("hm:a", NOW, nonce, None, None, NOW) is Verdict.REPLAY


@given(nonce=st.binary(max_size=64).filter(lambda b: len(b) != 16))
def test_nonces_of_other_lengths_are_folded_and_still_caught(nonce: bytes) -> None:
    guard = ReplayGuard(None)
    assert guard.check("hm:a", NOW, nonce, None, None, NOW) is Verdict.ACCEPT
    assert guard.check("hm:a", NOW, nonce, None, None, NOW) is Verdict.REPLAY
    assert guard.check("hm:a", NOW, nonce + b"x", None, None, NOW) is Verdict.ACCEPT


def test_hash_is_stable_for_a_store_and_differs_between_stores(tmp_path: Path) -> None:
    """Keyed by the stored salt: the same (sender, nonce) is the same record after reopening,
    and another store (another salt) puts it elsewhere, so senders cannot aim at bits."""
    nonce = bytes(16)

    def record(guard: ReplayGuard) -> bytes:
        guard.check("hm:a", NOW, nonce, None, None, NOW)
        parts = guard._gens[NOW // GEN_MS].parts
        return next(bytes(p) for p in parts if p)

    first = ReplayGuard(tmp_path / "a.db")
    a = record(first)
    first._gens.clear()  # forget the unflushed record, keep the salt
    assert record(first) == a
    assert record(ReplayGuard(tmp_path / "b.db")) != a


def test_store_merges_a_partition_and_finds_only_aligned_records(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.db")
    db.executescript(SCHEMA)  # the guard's file migrates to it
    store = NonceStore(db)
    records = [os.urandom(16) for _ in range(MERGE_AT * 3)]
    for r in records:
        store.append([(1, 7, r)])
    rows = db.execute("SELECT count(*) FROM nonce_runs WHERE gen = 1 AND part = 7").fetchone()
    assert rows[0] < MERGE_AT
    assert all(store.contains(1, 7, r) for r in records)
    assert not store.contains(1, 8, records[0])
    assert not store.contains(2, 7, records[0])
    straddling = records[0][8:] + records[1][:8]
    assert not store.contains(1, 7, straddling)
    assert not find_record(b"".join(records[:2]), straddling)
    store.drop_before(2)
    assert not store.contains(1, 7, records[0])
