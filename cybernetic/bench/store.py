"""CRDT store throughput: local writes, merges from many sites, and plain upserts as reference.

``merge_rows_per_s``: rows from ``--sites`` sites x ``--rows`` rows each (distinct keys, so
every row is an insert: the dearer case) merged through :meth:`LWWStore.merge`, which runs
the LWW upsert, assigns versions and collects the changed rows for notifications.
``raw_upsert_rows_per_s``: the same rows through a plain ``INSERT … ON CONFLICT DO UPDATE``
into a bare table with the same primary key, same pragmas, same batch size, same run.
Both use WAL with ``synchronous=NORMAL`` (durable against process crashes; a power cut may
lose the last commits, which peers re-send because watermarks commit with the rows).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from amcp.store import LWWStore, Row
from amcp.store.hlc import pack
from amcp.store.schema import connect
from cybernetic.bench import median_of, progress

DESCRIPTION = "CRDT store: local writes, merges of 200 sites x 1000 rows, raw upsert reference"
T0 = 1_800_000_000_000
RAW_SQL = (
    "INSERT INTO raw(ns, key, value, hlc, site) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(ns, key) DO UPDATE SET value=excluded.value, hlc=excluded.hlc, "
    "site=excluded.site"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1000, help="rows per site")
    parser.add_argument("--batch", type=int, default=1000, help="rows per transaction")
    parser.add_argument("--runs", type=int, default=3)


def _rows(sites: int, per_site: int) -> list[Row]:
    return [
        Row("bench", f"s{s}/k{i}", b"value-%08d" % i, pack(T0 + i, s % 7), f"site-{s:03d}")
        for s in range(sites)
        for i in range(per_site)
    ]


def _merge(root: Path, rows: list[Row], batch: int) -> float:
    store = LWWStore(root / "merge.db", "hub", wall_ms=lambda: T0 + 10_000_000)
    try:
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            store.merge(rows[i : i + batch])
        elapsed = time.perf_counter() - start
    finally:
        store.close()
    return len(rows) / elapsed


def _raw(root: Path, rows: list[Row], batch: int) -> float:
    conn: sqlite3.Connection = connect(root / "raw.db")
    try:
        conn.execute(
            "CREATE TABLE raw (ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB, "
            "hlc INTEGER NOT NULL, site TEXT NOT NULL, PRIMARY KEY (ns, key))"
        )
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                RAW_SQL,
                [(r.namespace, r.key, r.value, r.hlc, r.site) for r in rows[i : i + batch]],
            )
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return len(rows) / elapsed


def _local(root: Path, count: int, batch: int) -> float:
    store = LWWStore(root / "local.db", "gw")
    try:
        start = time.perf_counter()
        for i in range(0, count, batch):
            store.write(("bench", f"k{j}", b"value-%08d" % j) for j in range(i, i + batch))
        elapsed = time.perf_counter() - start
    finally:
        store.close()
    return count / elapsed


def _fresh(measure: str, fn: object) -> float:
    """Run one measurement in a fresh directory so every run starts from an empty file."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-store-{measure}-"))
    try:
        return fn(root)  # type: ignore[operator,no-any-return]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, object]:
    rows = _rows(args.sites, args.rows)
    progress(f"store: {len(rows)} rows from {args.sites} sites, {args.runs} runs each")
    merge_runs: list[float] = []
    raw_runs: list[float] = []
    for n in range(args.runs):  # interleaved, so drift on a shared machine hits both alike
        merge_runs.append(_fresh("merge", lambda root: _merge(root, rows, args.batch)))
        raw_runs.append(_fresh("raw", lambda root: _raw(root, rows, args.batch)))
        progress(f"  run {n + 1}: merge {merge_runs[-1]:,.0f}/s raw {raw_runs[-1]:,.0f}/s")
    local = median_of(
        args.runs, lambda: _fresh("local", lambda root: _local(root, len(rows), args.batch))
    )
    merge = sorted(merge_runs)[len(merge_runs) // 2]
    raw = sorted(raw_runs)[len(raw_runs) // 2]
    return {
        "local_writes_per_s": round(local),
        "merge_rows_per_s": round(merge),
        "raw_upsert_rows_per_s": round(raw),
        "merge_ratio": round(merge / raw, 3),
        "rows": len(rows),
        "batch": args.batch,
        "runs": args.runs,
        "synchronous": "NORMAL",
    }
