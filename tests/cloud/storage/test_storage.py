"""The cloud store on both engines: migrations, dedup, nonce claims, queries, rollups, retention.

Every test runs on SQLite and on PostgreSQL (a database of its own on the local server, or on a
private cluster when none answers): one behaviour, two engines.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from amcp.wire.telemetry import EventRecord, Reading
from cloud.readings import Claim, ReadingStore, StoreBatch
from cloud.storage import migrations, queries
from cloud.storage.engine import Engine, OnOpen, PendingMigrationsError, Tx
from cloud.storage.postgres import PgTx, PostgresEngine
from cloud.storage.sqlite import SqliteEngine
from cloud.storage.upkeep import DAY_MS, RetentionSettings, Upkeep

ENGINES = ["sqlite", "postgresql"]
T0 = 1_700_000_040_000  # a minute boundary
MIN = 60_000


def _engine(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, on_open: OnOpen = "migrate"
) -> Engine:
    if kind == "sqlite":
        return SqliteEngine(tmp_path / "cloud.sqlite3", on_open=on_open)
    return PostgresEngine(request.getfixturevalue("pg_dsn"), on_open=on_open)


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ReadingStore]:
    s = ReadingStore(_engine(request.param, tmp_path, request))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _readings(device: str, seqs: range, *, ts0: int = T0, step: int = 1000) -> list[Reading]:
    return [
        Reading(device, "b1", s, ts0 + s * step, {"t": float(s), "ok": True, "name": "x"})
        for s in seqs
    ]


async def test_migrations_from_empty_record_every_step(store: ReadingStore) -> None:
    applied = await store.engine.read(migrations.applied)
    assert [a.version for a in applied] == list(range(1, migrations.VERSION + 1))
    assert all(a.applied_ms > 0 for a in applied)

    def tables(tx: Tx) -> list[bool]:
        names = [
            "readings", "events", "gateways", "devices", "rollup_minute", "rollup_hour",
            "nonce_registry", "audit_events", "policies", "policy_notes", "crdt_snapshots",
            "goldrush_patterns", "context_graph_nodes", "context_graph_edges",
        ]  # fmt: skip
        return [migrations.has_table(tx, n) for n in names]

    assert all(await store.engine.read(tables))


_FIRST_WAVE = """
CREATE TABLE readings (device TEXT NOT NULL, boot TEXT NOT NULL, seq INTEGER NOT NULL,
  ts_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL, stored_ms INTEGER NOT NULL,
  gateway TEXT NOT NULL, "values" TEXT NOT NULL, PRIMARY KEY (device, boot, seq)) WITHOUT ROWID;
CREATE TABLE events (id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, name TEXT NOT NULL,
  source TEXT NOT NULL, severity TEXT NOT NULL, ts_ms INTEGER NOT NULL,
  stored_ms INTEGER NOT NULL, attrs TEXT NOT NULL);
INSERT INTO readings VALUES ('old', 'b0', 1, 1000, 1000, 1000, 'gw0', '{"t": 1.5}');
PRAGMA user_version = 1;
"""


@contextlib.contextmanager
def _previous_schema(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    """A store at schema 1 holding one reading, as the first wave left it."""
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(tmp_path / "cloud.sqlite3")) as db:
            db.executescript(_FIRST_WAVE)
    else:
        with psycopg.connect(request.getfixturevalue("pg_dsn"), autocommit=True) as conn:
            tx = PgTx(conn)
            migrations.apply(tx, migrations.STEPS[0])
            tx.execute(
                "INSERT INTO readings VALUES ('old', 'b0', 1, 1000, 1000, 1000, 'gw0', ?)",
                ('{"t": 1.5}',),
            )
    yield


@pytest.mark.parametrize("kind", ENGINES)
async def test_migration_from_the_previous_schema_keeps_the_data(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with _previous_schema(kind, tmp_path, request):
        behind = _engine(kind, tmp_path, request, on_open="check")
        with pytest.raises(PendingMigrationsError, match="cybernetic cloud migrate"):
            await behind.open()
        store = ReadingStore(_engine(kind, tmp_path, request))
        await store.open()
        try:
            assert await store.count() == 1
            rows = await store.engine.read(lambda tx: queries.readings(tx, "old", 0, 10_000))
            assert rows[0].values == {"t": 1.5}
            applied = await store.engine.read(migrations.applied)
            assert [a.version for a in applied] == [1, 2]
        finally:
            await store.close()
        # once migrated, a check-only engine opens
        checked = _engine(kind, tmp_path, request, on_open="check")
        await checked.open()
        await checked.close()


async def test_duplicates_are_dropped_by_identity(store: ReadingStore) -> None:
    first = await store.store_many([StoreBatch("gw1", _readings("d1", range(1, 11)), [])], T0)
    again = await store.store_many([StoreBatch("gw1", _readings("d1", range(6, 16)), [])], T0 + 1)
    assert (first[0].stored, first[0].duplicates) == (10, 0)
    assert (again[0].stored, again[0].duplicates) == (5, 5)
    assert await store.count() == 15


async def test_a_claimed_envelope_is_a_replay_whoever_stores_it(store: ReadingStore) -> None:
    claim = Claim("gw1-key", b"n" * 16, T0)
    batch = StoreBatch("gw1", _readings("d1", range(1, 4)), [], claim)
    event = EventRecord("rule.hot", T0, "d1")
    with_event = batch._replace(events=[event])
    first, second = await store.store_many([with_event, with_event], T0)
    assert first.stored == 3
    assert first.events == 1
    assert not first.replayed
    assert second.replayed
    assert second.events == 0  # a replay stores nothing, events included
    (third,) = await store.store_many([batch], T0 + 5)
    assert third.replayed
    fresh = batch._replace(claim=Claim("gw1-key", b"m" * 16, T0))
    (fourth,) = await store.store_many([fresh], T0 + 5)
    assert (fourth.replayed, fourth.stored, fourth.duplicates) == (False, 0, 3)


async def test_time_range_queries_page_by_key(store: ReadingStore) -> None:
    await store.store_many(
        [
            StoreBatch("gw1", _readings("d1", range(1, 101)), []),
            StoreBatch("gw1", _readings("d2", range(1, 11)), []),
        ],
        T0,
    )
    start, end = T0 + 10_000, T0 + 60_000  # seq 10..59

    def pages(tx: Tx) -> list[list[queries.ReadingRow]]:
        out: list[list[queries.ReadingRow]] = []
        after = None
        while page := queries.readings(tx, "d1", start, end, limit=15, after=after):
            out.append(page)
            last = page[-1]
            after = (last.ts_ms, last.boot, last.seq)
        return out

    got = await store.engine.read(pages)
    assert [len(p) for p in got] == [15, 15, 15, 5]
    seqs = [r.seq for p in got for r in p]
    assert seqs == list(range(10, 60))
    only_t = await store.engine.read(lambda tx: queries.readings(tx, "d1", start, end, metric="t"))
    assert only_t[0].values == {"t": 10.0}
    with pytest.raises(ValueError, match="limit"):
        await store.engine.read(lambda tx: queries.readings(tx, "d1", 0, 1, limit=0))


async def test_latest_per_device_and_fleet_counts(store: ReadingStore) -> None:
    await store.store_many(
        [
            StoreBatch("gw1", _readings("d1", range(1, 21)), [EventRecord("e", T0, "d1")]),
            StoreBatch("gw2", _readings("d2", range(1, 6)), []),
        ],
        T0,
    )
    # an older reading arriving late does not replace the latest one
    await store.store_many([StoreBatch("gw1", _readings("d1", range(1)), [])], T0 + 1)
    latest = await store.engine.read(queries.latest)
    assert [(r.device, r.gateway, r.seq) for r in latest] == [("d1", "gw1", 20), ("d2", "gw2", 5)]
    gw2 = await store.engine.read(lambda tx: queries.latest(tx, gateway="gw2"))
    assert [r.device for r in gw2] == ["d2"]
    counts = await store.engine.read(lambda tx: queries.fleet_counts(tx, T0 + 1000))
    assert counts == queries.FleetCounts(
        gateways=2, active_gateways=2, devices=2, readings=26, events_last_hour=1
    )


async def test_rollups_per_minute_and_hour_are_exact_after_duplicates_and_late_data(
    store: ReadingStore,
) -> None:
    upkeep = Upkeep(store.engine, RetentionSettings(raw_days=0), window_s=90)
    # seq 0..119 at one per second: two minutes, t = seq
    await store.store_many([StoreBatch("gw1", _readings("d1", range(120)), [])], T0)
    await upkeep.rollup()
    # a duplicate batch and a late reading of the first minute
    await store.store_many([StoreBatch("gw1", _readings("d1", range(50, 70)), [])], T0 + 1)
    late = Reading("d1", "b2", 1, T0 + 30_500, {"t": 1000.0})
    await store.store_many([StoreBatch("gw1", [late], [])], T0 + 2)
    minutes, hours = await upkeep.rollup()
    assert (minutes, hours) == (2, 1)
    rows = await store.engine.read(
        lambda tx: queries.rollups(tx, "d1", T0, T0 + 10 * MIN, metric="t")
    )
    assert [(r.bucket_ms, r.n, r.low, r.high) for r in rows] == [
        (T0, 61, 0.0, 1000.0),
        (T0 + MIN, 60, 60.0, 119.0),
    ]
    assert rows[1].mean == pytest.approx(sum(range(60, 120)) / 60)
    assert {r.metric for r in await store.engine.read(
        lambda tx: queries.rollups(tx, "d1", T0, T0 + 10 * MIN)
    )} == {"t"}  # booleans and strings are not rolled up  # fmt: skip
    hour0 = T0 - T0 % 3_600_000
    (hour,) = await store.engine.read(
        lambda tx: queries.rollups(tx, "d1", hour0, hour0 + 3_600_000, resolution="hour")
    )
    assert (hour.bucket_ms, hour.n, hour.low, hour.high) == (hour0, 121, 0.0, 1000.0)
    assert await upkeep.rollup() == (0, 0)  # nothing pending


async def test_retention_drops_old_rows_and_keeps_rollups(store: ReadingStore) -> None:
    now = T0 + 40 * DAY_MS
    upkeep = Upkeep(
        store.engine, RetentionSettings(raw_days=30, minute_days=90, hour_days=0), window_s=90
    )
    old = _readings("d1", range(10))
    recent = _readings("d1", range(10, 20), ts0=now - 1000 * 20)
    await store.store_many(
        [StoreBatch("gw1", old, [EventRecord("old", T0, "d1")], Claim("k", b"a" * 16, T0))], T0
    )
    await upkeep.rollup(T0 + MIN)  # rolled up while fresh
    await store.store_many([StoreBatch("gw1", recent, [], Claim("k", b"b" * 16, now))], now)
    await upkeep.rollup(now)
    deleted = await upkeep.expire(now)
    assert deleted["readings"] == 10
    assert deleted["events"] == 1
    assert deleted["nonce_registry"] == 1
    assert deleted["rollup_minute"] == 0
    assert "rollup_hour" not in deleted  # kept forever
    assert await store.count() == 10
    rolled = await store.engine.read(lambda tx: queries.rollups(tx, "d1", 0, now + MIN))
    assert rolled[0].bucket_ms == T0  # the old minute's rollup outlives its raw readings
    # a late duplicate of an expired minute does not overwrite its rollup with nothing
    await store.store_many([StoreBatch("gw1", old[:1], [])], now)
    await upkeep.rollup(now)
    rolled_again = await store.engine.read(lambda tx: queries.rollups(tx, "d1", 0, T0 + MIN))
    assert rolled_again == rolled[:1]


async def test_unstorable_values_are_refused_by_index(store: ReadingStore) -> None:
    bad = Reading("d1", "b1", 2, T0, {"big": 2**70})
    (result,) = await store.store_many(
        [StoreBatch("gw1", [*_readings("d1", range(1, 2)), bad], [])], T0
    )
    assert result.stored == 1
    assert list(result.refused) == [1]
