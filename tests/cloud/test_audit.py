"""Audit, gateway chain to cloud log, on both engines: entries shipped as events, appended as
Merkle leaves under signed tree heads, verified from what is stored; tampering found and
located; what gateways send wrong recorded as findings."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from amcp.audit.chain import GENESIS, Entry
from amcp.audit.merkle import leaf_hash, verify_inclusion
from amcp.crypto.keystore import KeyStore
from amcp.wire.telemetry import EventRecord
from cloud.audit import AuditLog
from cloud.audit_verify import Report, audit_keys, verify
from cloud.readings import ReadingStore, StoreBatch
from cloud.storage.engine import Tx
from cloud.storage.postgres import PostgresEngine
from cloud.storage.sqlite import SqliteEngine
from gateway.audit import AuditChain, entry_event

DAY_S = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ReadingStore]:
    engine = (
        SqliteEngine(tmp_path / "cloud.sqlite3")
        if request.param == "sqlite"
        else PostgresEngine(request.getfixturevalue("pg_dsn"))
    )
    s = ReadingStore(engine)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    k = KeyStore(tmp_path / "audit-key")
    k.generate("cloud")
    return k


async def _chain(tmp_path: Path, gateway: str, clock: Clock, n: int) -> AuditChain:
    chain = AuditChain(tmp_path / f"{gateway}-audit.sqlite3", gateway, clock=clock)
    await chain.open()
    for i in range(n):
        await chain.append("s2.limits", "cloud", f"dev-{i % 3}", {"rate": i}, causation=f"env-{i}")
    return chain


async def _ship(store: ReadingStore, chain: AuditChain, sender: str | None = None) -> None:
    rows = await chain.entries(0, 10_000)
    events = [entry_event(e, p) for e, _, p in rows]
    await store.store_many([StoreBatch(sender or chain.source, [], events)], 1)


async def _verify(store: ReadingStore, keys: KeyStore, gateway: str | None = None) -> Report:
    found = audit_keys(keys.directory)
    return await store.engine.read(lambda tx: verify(tx, found, gateway))


async def test_entries_become_leaves_under_signed_heads_and_verify(
    store: ReadingStore, keys: KeyStore, tmp_path: Path
) -> None:
    clock = Clock()
    log = AuditLog(store.engine, keys.signer(), clock=clock)
    await log.load()
    chains = [await _chain(tmp_path, f"gw-{g}", clock, 20) for g in range(3)]
    for chain in chains:
        await _ship(store, chain)
    await _ship(store, chains[0])  # shipped twice (at least once): nothing new, no finding
    assert await log.round() == 60
    report = await _verify(store, keys)
    assert (report.entries, report.gateways, report.heads) == (60, 3, 1)
    assert report.problems == []
    assert report.findings == []
    # an inclusion proof for any leaf verifies against the signed head
    head = await log.latest_head()
    assert head is not None
    stored = await store.engine.read(
        lambda tx: tx.execute("SELECT leaf, hash FROM audit_events WHERE leaf = 17")
    )
    leaf, digest = stored[0]
    verify_inclusion(
        leaf, head.size, leaf_hash(bytes(digest)), log.inclusion(leaf, head.size), head.root
    )
    # a restarted log picks up where it was: more entries, a consistent second head
    more = await _chain(tmp_path, "gw-9", clock, 5)
    await _ship(store, more)
    again = AuditLog(store.engine, keys.signer(), clock=clock)
    await again.load()
    assert await again.round() == 5
    assert (await _verify(store, keys)).problems == []
    for chain in [*chains, more]:
        await chain.close()


async def test_a_gateway_offline_for_a_day_ships_its_chain_and_the_log_verifies(
    store: ReadingStore, keys: KeyStore, tmp_path: Path
) -> None:
    clock = Clock()
    chain = await _chain(tmp_path, "gw-far", clock, 10)
    clock.now += DAY_S  # a day without the cloud, still recording
    for i in range(10):
        await chain.append("policy.bundle.applied", "cloud", "ingest", {"version": i})
    log = AuditLog(store.engine, keys.signer(), clock=clock)
    await log.load()
    await _ship(store, chain)
    assert await log.round() == 20
    report = await _verify(store, keys, "gw-far")
    assert report.entries == 20
    assert report.problems == []
    await chain.close()


async def _logged(store: ReadingStore, keys: KeyStore, tmp_path: Path) -> AuditChain:
    clock = Clock()
    log = AuditLog(store.engine, keys.signer(), clock=clock)
    await log.load()
    chain = await _chain(tmp_path, "gw-1", clock, 10)
    await _ship(store, chain)
    await log.round()
    assert (await _verify(store, keys)).problems == []
    return chain


async def _tamper(store: ReadingStore, sql: str, *params: object) -> None:
    await store.engine.write(lambda tx: tx.execute(sql, params))


async def test_a_changed_row_is_found_at_its_leaf(
    store: ReadingStore, keys: KeyStore, tmp_path: Path
) -> None:
    await _logged(store, keys, tmp_path)
    await _tamper(store, "UPDATE audit_events SET actor = 'mallory' WHERE leaf = 4")
    problems = (await _verify(store, keys)).problems
    assert any(p.startswith("leaf 4 (gw-1 entry 5): hash expected") for p in problems), problems


async def test_a_dropped_row_is_a_gap_and_a_missing_leaf(
    store: ReadingStore, keys: KeyStore, tmp_path: Path
) -> None:
    await _logged(store, keys, tmp_path)
    await _tamper(store, "DELETE FROM audit_events WHERE leaf = 3")
    problems = (await _verify(store, keys)).problems
    assert "leaf 3: missing (next stored leaf is 4)" in problems
    assert any("gw-1 entry 5: gap: expected seq 4" in p for p in problems), problems
    assert "tree head 10: the log has only 9 leaves" in problems


async def test_two_rows_swapped_break_the_chain_where_they_are(
    store: ReadingStore, keys: KeyStore, tmp_path: Path
) -> None:
    await _logged(store, keys, tmp_path)

    def swap(tx: Tx) -> None:
        tx.execute("UPDATE audit_events SET leaf = -1 WHERE leaf = 2")
        tx.execute("UPDATE audit_events SET leaf = 2 WHERE leaf = 6")
        tx.execute("UPDATE audit_events SET leaf = 6 WHERE leaf = -1")

    await store.engine.write(swap)
    problems = (await _verify(store, keys)).problems
    assert any(p.startswith("leaf 2: gw-1 entry 7: gap") for p in problems), problems
    assert any("tree head 10: root expected" in p for p in problems), problems


async def test_a_forged_tree_head_is_found(
    store: ReadingStore, keys: KeyStore, tmp_path: Path
) -> None:
    await _logged(store, keys, tmp_path)
    forger = KeyStore(tmp_path / "forger")
    signer = forger.generate("cloud")
    log = AuditLog(store.engine, signer)
    await log.load()
    head = log._sign(10, log.tree.root(), 5)
    await _tamper(store, "UPDATE audit_heads SET signature = ? WHERE size = 10", head.signature)
    problems = (await _verify(store, keys)).problems
    assert problems == ["tree head 10: bad signature (key " + keys.signer().key_id + ")"]


async def test_a_truncated_chain_and_another_gateways_entries_are_findings(
    store: ReadingStore, keys: KeyStore, tmp_path: Path
) -> None:
    clock = Clock()
    log = AuditLog(store.engine, keys.signer(), clock=clock, gap_wait_s=0)
    await log.load()
    chain = await _chain(tmp_path, "gw-1", clock, 10)
    rows = await chain.entries(0, 100)
    # entries 4 and 5 never arrive
    kept = [entry_event(e, p) for e, _, p in rows if e.seq not in {4, 5}]
    await store.store_many([StoreBatch("gw-1", [], kept)], 1)
    # gw-2 sends gw-1's chain as its own
    await _ship(store, chain, sender="gw-2")
    await log.round()
    report = await _verify(store, keys)
    assert report.problems == []  # the log itself is sound: what was wrong was recorded
    assert "gw-1 entry 6: gap: expected seq 4, found seq 6" in report.findings
    assert any(f.startswith("gw-2 entry 1: foreign") for f in report.findings), report.findings
    await chain.close()


async def test_an_entry_no_store_can_hold_is_a_finding_and_the_others_are_logged(
    store: ReadingStore, keys: KeyStore, tmp_path: Path
) -> None:
    clock = Clock()
    log = AuditLog(store.engine, keys.signer(), clock=clock, gap_wait_s=0)
    await log.load()
    hostile = [
        Entry("gw-bad", 1, 1, "a\x00b", "x", "y", bytes(32), "", GENESIS),  # NUL in text
        Entry("gw-bad", 2, 2**63 + 5, "k", "x", "y", bytes(32), "", GENESIS),  # beyond 64 bits
        Entry("gw-bad", 3, 1, "k", "x", "y", b"short", "", GENESIS),  # not a hash
    ]
    events = [
        EventRecord(
            "audit.entry",
            1,
            "gw-bad",
            "info",
            {"seq": e.seq, "entry": base64.b64encode(msgspec.msgpack.encode(e)).decode()},
        )
        for e in hostile
    ]
    await store.store_many([StoreBatch("gw-bad", [], events)], 1)
    good = await _chain(tmp_path, "gw-good", clock, 5)
    await _ship(store, good)
    assert await log.round() == 5
    report = await _verify(store, keys)
    assert report.problems == []
    assert report.entries == 5
    bad = [f for f in report.findings if f.startswith("gw-bad")]
    assert len(bad) == 3, report.findings
    assert "NUL" in bad[0]
    assert "out of range" in bad[1]
    assert "32 bytes" in bad[2]
    await good.close()
