"""The cloud's own audit chain on both engines: fleet rows and bundles written through
Authoring, and CRDT snapshots, become entries of the cloud's chain in the same Merkle log;
`audit verify` checks them with the gateways' chains, and a snapshot whose digest or state was
changed is found (cloud.audit_trail, cloud.snapshots)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from amcp import bundles
from amcp.crypto.keys import Ed25519Signer
from amcp.crypto.keystore import KeyStore
from amcp.store import Store
from amcp.wire.messages import PolicyBundle
from cloud.audit import AuditLog
from cloud.audit_trail import CloudTrail, actor
from cloud.audit_verify import Report, audit_keys, verify
from cloud.authoring import Authoring
from cloud.readings import ReadingStore
from cloud.snapshots import Snapshots, state_bytes
from cloud.storage.engine import Tx
from cloud.storage.postgres import PostgresEngine
from cloud.storage.sqlite import SqliteEngine


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
async def state(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "store.sqlite3", site="cloud-1")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    k = KeyStore(tmp_path / "audit-key")
    k.generate("cloud-1")
    return k


async def _verify(store: ReadingStore, keys: KeyStore) -> Report:
    found = audit_keys(keys.directory)
    return await store.engine.read(lambda tx: verify(tx, found))


def _kinds(tx: Tx) -> list[tuple[str, str, str, str]]:
    return [
        (str(k), str(a), str(s), str(c))
        for k, a, s, c in tx.execute(
            "SELECT kind, actor, subject, causation FROM audit_events WHERE source = 'cloud-1' "
            "ORDER BY seq"
        )
    ]


async def test_writes_and_bundles_are_entries_of_the_cloud_chain_and_verify(
    store: ReadingStore, state: Store, keys: KeyStore
) -> None:
    trail = CloudTrail(store.engine, "cloud-1")
    authoring = Authoring(state, trail=trail)
    await authoring.set_limit("all", "device/flood", {"rate": 5, "burst": 5})
    token = actor.set("api:alice")
    try:
        await authoring.set_zone("gw-1", "north")
    finally:
        actor.reset(token)
    await authoring.remove_zone("gw-9")  # nothing there: nothing written, nothing recorded
    signer = Ed25519Signer.generate("cloud-1")
    bundle = PolicyBundle(name="p", version=2, expires_ms=2**41, source="x", cause="mitigation:ab")
    data = bundles.sign(bundle, signer)
    expect = bundles.rows_digest({})
    await authoring.write_policies([(bundles.NAMESPACE, "p@*", data)], expect)
    log = AuditLog(store.engine, keys.signer())
    await log.load()
    assert await log.round() == 3
    assert await store.engine.read(_kinds) == [
        ("fleet.limits.set", "operator", "all/device/flood", ""),
        ("fleet.zones.set", "api:alice", "gw-1", ""),
        ("policy.pushed", "operator", "p@*", "mitigation:ab"),
    ]
    report = await _verify(store, keys)
    assert report.problems == []
    assert report.gateways == 1  # the cloud's own chain, checked like a gateway's
    # a restarted trail continues the chain (seq and prev from what is stored)
    again = CloudTrail(store.engine, "cloud-1")
    await Authoring(state, trail=again).set_zone("gw-2", "south")
    assert await log.round() == 1
    assert (await _verify(store, keys)).problems == []


async def test_snapshots_prove_the_state_at_a_time_and_tampering_is_found(
    store: ReadingStore, state: Store, keys: KeyStore
) -> None:
    trail = CloudTrail(store.engine, "cloud-1")
    await state.put("zones", "gw-1", b"north")
    await state.put("limits", "all/device/x", b'{"rate":1}')
    snaps = Snapshots(state, store.engine, trail)
    assert await snaps.take() == ["limits", "zones"]
    assert await snaps.take() == []  # nothing changed: no new snapshot
    await state.put("zones", "gw-2", b"south")
    assert await snaps.take() == ["zones"]
    # not yet logged (in the inbox): verify does not call that missing
    assert (await _verify(store, keys)).problems == []
    log = AuditLog(store.engine, keys.signer())
    await log.load()
    assert await log.round() == 3
    assert (await _verify(store, keys)).problems == []

    def newest(tx: Tx) -> tuple[int, bytes, bytes]:
        ((taken, digest, kept),) = tx.execute(
            "SELECT taken_ms, digest, state FROM crdt_snapshots WHERE namespace = 'zones' "
            "ORDER BY taken_ms DESC LIMIT 1"
        )
        return int(taken), bytes(digest), bytes(kept)

    taken, digest, kept = await store.engine.read(newest)
    assert kept == state_bytes({"gw-1": b"north", "gw-2": b"south"})
    assert digest == hashlib.sha256(kept).digest()

    def forge(tx: Tx) -> None:  # the state rewritten, its digest recomputed to match
        fake = state_bytes({"gw-1": b"south"})
        tx.execute(
            "UPDATE crdt_snapshots SET state = ?, digest = ? WHERE namespace = 'zones' "
            "AND taken_ms = ?",
            (fake, hashlib.sha256(fake).digest(), taken),
        )

    await store.engine.write(forge)
    problems = (await _verify(store, keys)).problems
    assert len(problems) == 1
    assert f"snapshot of zones at {taken}: digest expected {digest.hex()}" in problems[0]
