"""`cybernetic bench cloud`: a gateway backlog drained into the cloud store, per engine.

For each engine (PostgreSQL, SQLite) and each run: a backlog of signed telemetry batches (as
gateways coming back online send them) waits in the cloud broker for the workers' persistent
shared-subscription sessions; then one ``cybernetic cloud run`` worker (``role = "ingest"``)
drains it, and in a second round two workers share it. ``stored_ms`` is when the transaction
that stored a row began, so the rate is the rows of every transaction but the last over the
time from the first transaction's start to the last one's: the drain rate, process start-up
not counted (a backlog too small for two transactions reports 0). The reference, in the same
run, is the same rows written by the bare driver in batches of the same size, one
transaction each: psycopg's ``COPY`` on PostgreSQL, ``executemany`` on SQLite (both with the
cloud's table and indexes). ``lost`` and ``duplicates`` compare the store with what was sent.
PostgreSQL is the local server when it answers, else a private cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from amcp.runtime.database import connect
from amcp.wire.telemetry import Reading
from cloud.readings import _json
from cloud.storage import migrations
from cloud.storage.postgres import PgTx
from cloud.storage.sqlite import SqliteTx
from cybernetic.cloud_workers import Fleet, until
from cybernetic.postgres import admin_dsn, scratch_database

DESCRIPTION = "cloud store: a gateway backlog drained by 1 and 2 workers vs bare COPY/executemany"
TARGETS = {"ratio": 0.5}
GATEWAYS = 4
DEVICES_PER_GATEWAY = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500, help="readings per gateway batch")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--engines", default="postgresql,sqlite", help="engines to measure, comma-separated"
    )


def _backlog(n: int) -> dict[str, list[Reading]]:
    now = int(time.time() * 1000)
    out: dict[str, list[Reading]] = {}
    for i in range(n):
        g = i % GATEWAYS
        device = f"gw{g}-dev{(i // GATEWAYS) % DEVICES_PER_GATEWAY}"
        out.setdefault(f"gw-{g}", []).append(
            Reading(device, "b1", i, now + i, {"t": 20.0 + i % 7, "ok": True}, now)
        )
    return out


def _rows(backlog: dict[str, list[Reading]]) -> list[tuple[object, ...]]:
    now = int(time.time() * 1000)
    return [
        (r.device, r.boot, r.seq, r.ts_ms, r.received_ms, now, gw, _json(r.values))
        for gw, readings in backlog.items()
        for r in readings
    ]


# -- the references: the bare driver ------------------------------------------------------
def _raw_postgres(dsn: str, rows: list[tuple[object, ...]], batch: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        tx = PgTx(conn)
        for step in migrations.STEPS:
            migrations.apply(tx, step)
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(
                    "COPY readings (device, boot, seq, ts_ms, received_ms, stored_ms, gateway, "
                    '"values") FROM STDIN'
                ) as copy,
            ):
                for row in rows[i : i + batch]:
                    copy.write_row(row)
        return len(rows) / (time.perf_counter() - started)


def _raw_sqlite(path: Path, rows: list[tuple[object, ...]], batch: int) -> float:
    with contextlib.closing(connect(path, synchronous="FULL")) as db:
        tx = SqliteTx(db)
        for step in migrations.STEPS:
            db.execute("BEGIN")
            migrations.apply(tx, step)
            db.execute("COMMIT")
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                rows[i : i + batch],
            )
            db.execute("COMMIT")
        return len(rows) / (time.perf_counter() - started)


# -- the product ------------------------------------------------------------------------
def _summary(dsn: str, sqlite_path: Path) -> tuple[int, int, int, int, int]:
    """(rows, distinct identities, first and last stored_ms, rows stored before the last
    transaction). ``stored_ms`` is when the transaction that stored a row began."""
    sql = (
        "SELECT count(*), count(DISTINCT device || ':' || boot || ':' || seq), "
        "min(stored_ms), max(stored_ms), "
        "sum(CASE WHEN stored_ms < (SELECT max(stored_ms) FROM readings) THEN 1 ELSE 0 END) "
        "FROM readings"
    )
    if dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
    else:
        with contextlib.closing(connect(sqlite_path, readonly=True)) as db:
            row = db.execute(sql).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2] or 0), int(row[3] or 0), int(row[4] or 0)


def _count(dsn: str, sqlite_path: Path) -> int:
    try:
        return _summary(dsn, sqlite_path)[0]
    except (psycopg.Error, sqlite3.Error, OSError):
        return 0  # no store (or table) yet


async def _drain(
    root: Path, dsn: str, backlog: dict[str, list[Reading]], batch: int, workers: int
) -> dict[str, float]:
    fleet = Fleet(root, dsn)
    fleet.broker.start()
    names = [f"w{i + 1}" for i in range(workers)]
    try:
        for name in names:  # the persistent shared sessions exist, then the workers go away
            fleet.start_worker(name)
        await until(lambda: all(fleet.worker_ready(n) for n in names), 60, "workers ready")
        for name in names:
            fleet.stop_worker(name)
        for gateway, readings in backlog.items():
            await fleet.queue_backlog(gateway, readings, batch, root)
        for name in names:
            fleet.start_worker(name)
        total = sum(len(r) for r in backlog.values())
        await until(
            lambda: _count(dsn, fleet.sqlite_path) >= total,
            300,
            f"backlog drained: {fleet.log(names[0])[-2000:]}",
        )
        await asyncio.sleep(1.0)  # anything stored twice would be in by now
        rows, distinct, first, last, before_last = _summary(dsn, fleet.sqlite_path)
    finally:
        fleet.close()
    return {
        # from the start of the first transaction to the start of the last, the rows the
        # transactions before the last stored: the drain rate, start-up not counted
        "rows_per_s": before_last / ((last - first) / 1000) if last > first else 0.0,
        "lost": float(total - distinct),
        "duplicates": float(rows - distinct),
    }


@contextlib.contextmanager
def _database(engine: str, admin: str) -> Iterator[str]:
    if engine == "sqlite":
        yield ""
        return
    with scratch_database(admin, "bench") as dsn:
        yield dsn


def _one(engine: str, admin: str, args: argparse.Namespace) -> dict[str, float]:
    backlog = _backlog(args.messages)
    rows = _rows(backlog)
    with tempfile.TemporaryDirectory(prefix="bench-cloud-") as tmp:
        root = Path(tmp)
        with _database(engine, admin) as raw_dsn:
            raw = (
                _raw_postgres(raw_dsn, rows, args.batch)
                if engine == "postgresql"
                else _raw_sqlite(root / "raw.sqlite3", rows, args.batch)
            )
        figures: dict[str, float] = {"raw_copy_rows_per_s": raw}
        for workers in (1, 2):
            with _database(engine, admin) as dsn:
                got = asyncio.run(_drain(root / f"w{workers}", dsn, backlog, args.batch, workers))
            suffix = "" if workers == 1 else "_2_workers"
            figures[f"rows_per_s{suffix}"] = got["rows_per_s"]
            figures["lost"] = figures.get("lost", 0) + got["lost"]
            figures["duplicates"] = figures.get("duplicates", 0) + got["duplicates"]
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - {"postgresql", "sqlite"}
    if unknown or not engines:
        raise SystemExit(f"bench cloud: unknown engine(s) {sorted(unknown)}")
    result: dict[str, Any] = {
        "messages": args.messages,
        "batch": args.batch,
        "runs": args.runs,
        "workers_cpus": 2,
    }
    with admin_dsn() as admin:
        for engine in engines:
            runs = [_one(engine, admin, args) for _ in range(args.runs)]
            prefix = "" if engine == "postgresql" else "sqlite_"
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            result[f"{prefix}rows_per_s"] = round(med["rows_per_s"])
            result[f"{prefix}raw_copy_rows_per_s"] = round(med["raw_copy_rows_per_s"])
            result[f"{prefix}ratio"] = round(
                statistics.median(r["rows_per_s"] / r["raw_copy_rows_per_s"] for r in runs), 3
            )
            result[f"{prefix}rows_per_s_2_workers"] = round(med["rows_per_s_2_workers"])
            result[f"{prefix}scale_2_over_1"] = round(
                statistics.median(r["rows_per_s_2_workers"] / r["rows_per_s"] for r in runs), 3
            )
            result[f"{prefix}lost"] = int(sum(r["lost"] for r in runs))
            result[f"{prefix}duplicates"] = int(sum(r["duplicates"] for r in runs))
    if "postgresql" in engines:
        result["meets_targets"] = bool(
            result["ratio"] >= TARGETS["ratio"] and result["lost"] == 0
            and result["duplicates"] == 0
        )  # fmt: skip
    return result
