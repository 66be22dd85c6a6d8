"""`cybernetic bench audit`: the audit log's appends, proofs and full verification.

- ``appends_per_s`` (SQLite) and ``pg_appends_per_s``: gateway entries taken from the inbox into
  the Merkle log by :class:`~cloud.audit.AuditLog` rounds (chain checks, leaves, a signed tree
  head, one durable transaction a round), against ``raw_insert_per_s``: the same rows inserted
  bare in one transaction each round, the same run; ``append_ratio``.
- ``proof_verify_per_s``: RFC 9162 inclusion proofs of random leaves of the log verified, against
  ``bare_hash_chains_per_s``: the same node hashes computed bare; ``proof_ratio``.
- ``verify_full_log_s``: ``cybernetic audit verify``'s check of the whole log (every entry hashed
  again, every chain walked, the tree rebuilt, every head checked) for ``--entries`` entries,
  against ``raw_scan_hash_s``: every entry read and hashed once; ``verify_ratio`` (raw / verify).
- ``gateway_chain_appends_per_s``: entries appended to a gateway chain, durable, 100 a
  transaction (the event writer's batches), and ``gateway_single_appends_per_s`` one at a time,
  against ``gateway_raw_appends_per_s``: the same durable batches into a bare table;
  ``gateway_chain_ratio``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from amcp.audit.merkle import verify_inclusion
from amcp.crypto.keystore import KeyStore
from cloud.audit import AuditLog
from cloud.audit_verify import audit_keys, verify
from cloud.readings import ReadingStore, StoreBatch
from cloud.storage.engine import Engine, Tx
from cloud.storage.postgres import PostgresEngine
from cloud.storage.sqlite import SqliteEngine
from cybernetic.postgres import admin_dsn, scratch_database
from gateway.audit import AuditChain, entry_event

DESCRIPTION = "audit log: appends (SQLite, PostgreSQL), proof checks, full verification"
TARGETS = {"appends_per_s": 50_000, "proof_verify_per_s": 50_000, "verify_full_log_s": 30.0}
ROUND = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries in the log")
    parser.add_argument("--appends", type=int, default=50_000, help="entries per append run")
    parser.add_argument("--runs", type=int, default=3)


async def _gateway_events(root: Path, gateways: int, per: int) -> list[tuple[str, list[Any]]]:
    out = []
    for g in range(gateways):
        chain = AuditChain(root / f"gw{g}.sqlite3", f"gw-{g}")
        await chain.open()
        for i in range(0, per, 1000):
            await chain.append_many(
                [
                    ("s2.limits.applied", "s2", f"dev-{j % 7}", {"n": j}, "")
                    for j in range(i, min(per, i + 1000))
                ]
            )
        rows = await chain.entries(0, per)
        out.append((chain.source, [entry_event(e, p) for e, _, p in rows]))
        await chain.close()
    return out


async def _fill_inbox(store: ReadingStore, events: list[tuple[str, list[Any]]]) -> None:
    for source, evs in events:
        for i in range(0, len(evs), 1000):
            await store.store_many([StoreBatch(source, [], evs[i : i + 1000])], 1)


async def _appends(
    engine: Engine, signer: Any, events: list[tuple[str, list[Any]]]
) -> tuple[float, float]:
    store = ReadingStore(engine)
    await store.open()
    try:
        await _fill_inbox(store, events)
        total = sum(len(e) for _, e in events)
        rows = await engine.read(
            lambda tx: tx.execute("SELECT source, seq, entry, payload FROM audit_inbox")
        )
        log = AuditLog(engine, signer)
        await log.load()
        started = time.perf_counter()
        done = 0
        while done < total:
            n = await log.round()
            if n == 0:
                break
            done += n
        took = time.perf_counter() - started

        def raw(tx: Tx, chunk: list[Any], base: int) -> None:
            tx.executemany(
                "INSERT INTO policy_notes (policy, version, ts_ms, author, note) "
                "VALUES (?, ?, ?, ?, ?)",
                [(s, q + base, 0, "bench", str(p)) for s, q, _, p in chunk],
            )

        raw_started = time.perf_counter()
        for i in range(0, len(rows), ROUND):
            await engine.write(functools.partial(raw, chunk=rows[i : i + ROUND], base=i))
        raw_took = time.perf_counter() - raw_started
    finally:
        await store.close()
    return done / took, len(rows) / raw_took


def _proofs(log: AuditLog, n: int) -> tuple[float, float]:
    """Inclusion proofs verified per second, and the reference: the same SHA-256 node hashes
    (``0x01 || left || right``, one per proof step) computed bare, with no proof logic."""
    size = len(log.tree)
    root = log.tree.root()
    picks = [random.randrange(size) for _ in range(n)]
    proofs = [(i, log.tree.leaf(i), log.inclusion(i, size)) for i in picks]
    started = time.perf_counter()
    for i, leaf, proof in proofs:
        verify_inclusion(i, size, leaf, proof, root)
    rate = n / (time.perf_counter() - started)
    sha = hashlib.sha256
    started = time.perf_counter()
    for _i, leaf, proof in proofs:
        node = leaf
        for sibling in proof:
            node = sha(b"\x01" + node + sibling).digest()
    return rate, n / (time.perf_counter() - started)


def _raw_scan(tx: Tx) -> int:
    """The reference of a full verification: every stored entry read and hashed once."""
    sha = hashlib.sha256
    n = 0
    for row in tx.execute(
        "SELECT source, seq, ts_ms, kind, actor, subject, digest, causation, "
        "prev_hash FROM audit_events ORDER BY leaf"
    ):
        sha(repr(row).encode()).digest()
        n += 1
    return n


async def _chain_rates(root: Path) -> tuple[float, float, float]:
    chain = AuditChain(root / "rate.sqlite3", "gw-rate")
    await chain.open()
    try:
        started = time.perf_counter()
        for _ in range(100):
            await chain.append_many([("s2.zombie", "s2", "dev", {"i": i}, "") for i in range(100)])
        batched = 10_000 / (time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(200):
            await chain.append("s2.zombie", "s2", "dev", {"i": i})
        single = 200 / (time.perf_counter() - started)
    finally:
        await chain.close()
    return batched, single, _raw_chain_rate(root / "raw.sqlite3")


def _raw_chain_rate(path: Path) -> float:
    """The reference of chain appends: the same 100-row durable transactions into a bare
    table (``synchronous=FULL``), no hashing, no chain."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, kind TEXT, payload TEXT)")
        started = time.perf_counter()
        for b in range(100):
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO t VALUES (?, ?, ?)",
                [(b * 100 + i, "s2.zombie", f'{{"i": {i}}}') for i in range(100)],
            )
            db.execute("COMMIT")
        return 10_000 / (time.perf_counter() - started)
    finally:
        db.close()


async def _main(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    keys = KeyStore(root / "audit-key")
    signer = keys.generate("cloud")
    append_events = await _gateway_events(root / "gw", 5, args.appends // 5)
    result: dict[str, Any] = {}
    sqlite_runs, pg_runs = [], []
    with admin_dsn() as admin:
        for run in range(args.runs):
            sqlite_runs.append(
                await _appends(SqliteEngine(root / f"a{run}.sqlite3"), signer, append_events)
            )
            with scratch_database(admin, "bench") as dsn:
                pg_runs.append(await _appends(PostgresEngine(dsn), signer, append_events))
    result["appends_per_s"] = round(statistics.median(r[0] for r in sqlite_runs))
    result["raw_insert_per_s"] = round(statistics.median(r[1] for r in sqlite_runs))
    result["append_ratio"] = round(statistics.median(r[0] / r[1] for r in sqlite_runs), 3)
    result["pg_appends_per_s"] = round(statistics.median(r[0] for r in pg_runs))
    result["pg_raw_insert_per_s"] = round(statistics.median(r[1] for r in pg_runs))
    result["pg_append_ratio"] = round(statistics.median(r[0] / r[1] for r in pg_runs), 3)
    # the big log: built once, through the same rounds, then verified in full
    engine = SqliteEngine(root / "big.sqlite3")
    big = await _gateway_events(root / "big", 10, args.entries // 10)
    store = ReadingStore(engine)
    await store.open()
    await _fill_inbox(store, big)
    log = AuditLog(engine, signer)
    await log.load()
    while await log.round():
        pass
    proofs = [_proofs(log, 20_000) for _ in range(args.runs)]
    result["proof_verify_per_s"] = round(statistics.median(r[0] for r in proofs))
    result["bare_hash_chains_per_s"] = round(statistics.median(r[1] for r in proofs))
    result["proof_ratio"] = round(statistics.median(r[0] / r[1] for r in proofs), 3)
    started = time.perf_counter()
    report = await engine.read(lambda tx: verify(tx, audit_keys(keys.directory)))
    result["verify_full_log_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    await engine.read(_raw_scan)
    result["raw_scan_hash_s"] = round(time.perf_counter() - started, 2)
    result["verify_ratio"] = round(
        result["raw_scan_hash_s"] / max(result["verify_full_log_s"], 1e-3), 3
    )
    result["verified_entries"] = report.entries
    result["verify_problems"] = len(report.problems)
    await store.close()
    batched, single, raw = await _chain_rates(root)
    result["gateway_chain_appends_per_s"] = round(batched)
    result["gateway_single_appends_per_s"] = round(single)
    result["gateway_raw_appends_per_s"] = round(raw)
    result["gateway_chain_ratio"] = round(batched / raw, 3)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        result = {"entries": args.entries, "appends": args.appends, "runs": args.runs}
        result |= asyncio.run(_main(args, Path(tmp)))
    result["meets_targets"] = bool(
        result["appends_per_s"] >= TARGETS["appends_per_s"]
        and result["proof_verify_per_s"] >= TARGETS["proof_verify_per_s"]
        and result["verify_full_log_s"] <= TARGETS["verify_full_log_s"]
        and result["verify_problems"] == 0
    )
    return result
