"""`cybernetic bench audit`: the audit log's appends, proofs and full verification.

- ``appends_per_s`` (SQLite) and ``pg_appends_per_s``: gateway entries taken from the inbox into
  the Merkle log by :class:`~cloud.audit.AuditLog` rounds (chain checks, leaves, a signed tree
  head, one durable transaction a round), against ``raw_insert_per_s``: the same rows inserted
  bare in one transaction each round, the same run; ``append_ratio``.
- ``proof_verify_per_s``: RFC 9162 inclusion proofs of random leaves of the log verified.
- ``verify_full_log_s``: ``cybernetic audit verify``'s check of the whole log (every entry hashed
  again, every chain walked, the tree rebuilt, every head checked) for ``--entries`` entries.
- ``gateway_chain_appends_per_s``: entries appended to a gateway chain, durable, 100 a
  transaction (the event writer's batches), and ``gateway_single_appends_per_s`` one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
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


def _proofs(log: AuditLog, n: int) -> float:
    size = len(log.tree)
    root = log.tree.root()
    picks = [random.randrange(size) for _ in range(n)]
    proofs = [(i, log.tree.leaf(i), log.inclusion(i, size)) for i in picks]
    started = time.perf_counter()
    for i, leaf, proof in proofs:
        verify_inclusion(i, size, leaf, proof, root)
    return n / (time.perf_counter() - started)


async def _chain_rates(root: Path) -> tuple[float, float]:
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
    return batched, single


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
    result["proof_verify_per_s"] = round(
        statistics.median(_proofs(log, 20_000) for _ in range(args.runs))
    )
    started = time.perf_counter()
    report = await engine.read(lambda tx: verify(tx, audit_keys(keys.directory)))
    result["verify_full_log_s"] = round(time.perf_counter() - started, 2)
    result["verified_entries"] = report.entries
    result["verify_problems"] = len(report.problems)
    await store.close()
    batched, single = await _chain_rates(root)
    result["gateway_chain_appends_per_s"] = round(batched)
    result["gateway_single_appends_per_s"] = round(single)
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
