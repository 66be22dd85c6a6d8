"""Gateway and cloud sync through a real Mosquitto, with real SQLite files and envelopes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from amcp.store import Store
from amcp.sync import REFUSED_NAMESPACE, Refusal
from cybernetic.mosquitto import MosquittoBroker
from tests.amcp.sync.sync_support import (
    Fleet,
    fingerprint,
    synced_dump,
    wait_converged,
    wait_for,
)


@pytest.fixture
async def fleet(broker: MosquittoBroker, tmp_path: Path, topic: str) -> AsyncIterator[Fleet]:
    f = Fleet(broker, tmp_path, topic)
    await f.open()
    yield f
    await f.close()


async def _write(store: Store, ns: str, keys: range, value: bytes, batch: int = 5000) -> None:
    for i in range(keys.start, keys.stop, batch):
        await store.write((ns, f"k{j:06d}", value) for j in range(i, min(i + batch, keys.stop)))


async def test_sync_offline_gateway_converges_after_100k_changes_each_side(fleet: Fleet) -> None:
    await fleet.start_cloud()
    await fleet.start_gateway()
    await fleet.cloud.put("twin.desired", "dev1/mode", b"auto")
    await fleet.gw.put("twin.reported", "dev1/temp", b"21")
    await wait_converged(fleet.gw, fleet.cloud)

    await fleet.stop("gw")  # the gateway goes offline; the cloud keeps running
    await _write(fleet.cloud, "twin.desired", range(100_000), b"desired")
    await _write(fleet.gw, "twin.reported", range(90_000), b"reported")
    await fleet.gw.write(("twin.reported", f"k{j:06d}", None) for j in range(0, 90_000, 9))
    await fleet.gw.write(("twin.reported", f"k{j:06d}", b"again") for j in range(1, 90_000, 9))
    await fleet.cloud.delete("twin.desired", "dev1/mode")

    await fleet.start_gateway()
    await wait_converged(fleet.gw, fleet.cloud, within=50)

    rows, tombstones, _ = await fingerprint(fleet.cloud)
    assert rows == 100_000 + 90_000 + 2
    assert tombstones == 10_000 + 1
    assert await fleet.gw.get("twin.desired", "k099999") == b"desired"
    assert await fleet.cloud.get("twin.reported", "k000001") == b"again"
    assert await fleet.gw.get("twin.desired", "dev1/mode") is None
    assert fleet.cloud_sync is not None
    assert fleet.cloud_sync.engine.stats.refused == 0


async def test_sync_wiped_gateway_database_resyncs_fully(fleet: Fleet, tmp_path: Path) -> None:
    await fleet.start_cloud()
    await fleet.start_gateway()
    await _write(fleet.gw, "twin.reported", range(2_000), b"r")
    await _write(fleet.cloud, "twin.desired", range(3_000), b"d")
    await wait_converged(fleet.gw, fleet.cloud)
    before = await synced_dump(fleet.cloud)

    await fleet.stop("gw")
    old_id = fleet.gw.database_id
    await fleet.gw.close()
    for suffix in ("", "-wal", "-shm"):
        await asyncio.to_thread(Path(f"{tmp_path / 'gw.db'}{suffix}").unlink, missing_ok=True)
    fleet.gw_store = await Store(tmp_path / "gw.db", site=fleet.gateway_id).open()
    assert fleet.gw.database_id != old_id
    assert await fingerprint(fleet.gw) == (0, 0, 0)

    await fleet.start_gateway()
    await wait_converged(fleet.gw, fleet.cloud)
    # everything came back, the gateway's own rows included (sent despite their origin)
    assert await synced_dump(fleet.gw) == before
    assert await fleet.gw.get("twin.reported", "k001999") == b"r"
    assert fleet.cloud_sync is not None
    assert fleet.cloud_sync.engine.stats.resyncs >= 1
    # and the wiped gateway's new writes still flow up
    await fleet.gw.put("twin.reported", "after", b"wipe")
    await wait_converged(fleet.gw, fleet.cloud)


async def test_sync_broker_restart_mid_sync_loses_nothing(
    broker_factory: Callable[[], MosquittoBroker], tmp_path: Path, topic: str
) -> None:
    broker = broker_factory()
    fleet = Fleet(broker, tmp_path, topic)
    await fleet.open()
    try:
        await _write(fleet.gw, "twin.reported", range(40_000), b"up")
        await _write(fleet.cloud, "twin.desired", range(40_000), b"down")
        await fleet.start_cloud()
        await fleet.start_gateway()

        async def partly_synced() -> bool:
            rows, _, _ = await fingerprint(fleet.cloud)
            return rows > 40_000

        await wait_for(partly_synced)
        broker.stop()
        rows_at_stop, _, _ = await fingerprint(fleet.cloud)
        assert rows_at_stop < 80_000, "sync finished before the broker stopped"
        await fleet.gw.write(("twin.reported", f"late{i}", b"x") for i in range(100))
        await asyncio.sleep(0.3)
        broker.start()
        await wait_converged(fleet.gw, fleet.cloud)
        rows, _, _ = await fingerprint(fleet.gw)
        assert rows == 80_100
    finally:
        await fleet.close()


async def test_sync_gateway_write_to_cloud_namespace_is_refused_and_recorded(
    fleet: Fleet,
) -> None:
    await fleet.start_cloud()
    await fleet.start_gateway()
    await fleet.cloud.put("policies", "p1", b"cloud-policy")
    await wait_converged(fleet.gw, fleet.cloud)

    # the gateway overwrites a cloud policy and claims another gateway's capability
    await fleet.gw.put("policies", "p1", b"forged")
    await fleet.gw.put("s1.capabilities", "gw-2/lamp", b"not mine")
    await fleet.gw.put("s1.capabilities", "gw-1/lamp", b"mine")
    await fleet.gw.put("twin.reported", "dev1/temp", b"22")

    async def reported() -> bool:
        return await fleet.cloud.get("twin.reported", "dev1/temp") == b"22"

    await wait_for(reported)
    assert await fleet.cloud.get("policies", "p1") == b"cloud-policy"
    assert await fleet.cloud.get("s1.capabilities", "gw-2/lamp") is None
    assert await fleet.cloud.get("s1.capabilities", "gw-1/lamp") == b"mine"

    events = await fleet.cloud.items(REFUSED_NAMESPACE)
    assert set(events) == {"gw-1/policies/p1", "gw-1/s1.capabilities/gw-2/lamp"}
    refusal = msgspec.msgpack.decode(events["gw-1/policies/p1"], type=Refusal)
    assert refusal.site == "gw-1"
    assert "owned by cloud" in refusal.reason
    assert {(r.namespace, r.key) for r in fleet.refusals} == {
        ("policies", "p1"),
        ("s1.capabilities", "gw-2/lamp"),
    }
    assert fleet.cloud_sync is not None
    stats = fleet.cloud_sync.engine.stats
    assert stats.refused == 2
    assert stats.refused_by["gw-1", "policies", "namespace owned by cloud"] == 1
    # the refusal record is local: it never travels to the gateway
    assert await fleet.gw.items(REFUSED_NAMESPACE) == {}


async def test_sync_live_updates_flow_both_ways_between_rounds(fleet: Fleet) -> None:
    fleet.settings.anti_entropy = 3600.0  # no periodic round can help here
    await fleet.start_cloud()
    await fleet.start_gateway()
    await wait_converged(fleet.gw, fleet.cloud)
    for i in range(5):
        await fleet.cloud.put("twin.desired", "dev1/mode", b"m%d" % i)
        await fleet.gw.put("twin.reported", "dev1/mode", b"m%d" % i)
        await wait_converged(fleet.gw, fleet.cloud)
    assert await fleet.gw.get("twin.desired", "dev1/mode") == b"m4"
