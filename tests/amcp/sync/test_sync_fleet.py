"""One cloud, several gateways, one broker: per-gateway watermarks, no echo, fan-out rules."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from amcp.link import CloudLinks, GatewayLink
from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.sync import CloudSync, GatewaySync, SyncSettings
from cybernetic.mosquitto import MosquittoBroker
from tests.amcp.sync.sync_support import FAST, login, wait_for

GATEWAYS = ("gw-a", "gw-b", "gw-c")


async def test_sync_cloud_keeps_one_stream_per_gateway_and_never_echoes(
    broker: MosquittoBroker, tmp_path: Path, topic: str
) -> None:
    settings = SyncSettings(
        topic_prefix=topic, ack_timeout=FAST.ack_timeout, live_delay=FAST.live_delay
    )
    secrets = {gw: os.urandom(32) for gw in GATEWAYS}
    cloud_links = CloudLinks(secrets.get, None)
    cloud = await Store(tmp_path / "cloud.db", site="cloud").open()
    stores = {gw: await Store(tmp_path / f"{gw}.db", site=gw).open() for gw in GATEWAYS}
    links = {gw: GatewayLink(gw, secrets[gw], None) for gw in GATEWAYS}
    cloud_sync = CloudSync(settings, cloud, cloud_links, login(broker, "cloud"))
    syncs = {
        gw: GatewaySync(settings, stores[gw], links[gw], login(broker, "gateway"), gateway=gw)
        for gw in GATEWAYS
    }
    tasks = [asyncio.create_task(cloud_sync.run(ChildContext("cloud")))]
    tasks += [asyncio.create_task(s.run(ChildContext(gw))) for gw, s in syncs.items()]
    try:

        async def all_met() -> bool:
            return set(cloud_sync.engine.sessions) == set(GATEWAYS) and all(
                "cloud" in s.engine.sessions for s in syncs.values()
            )

        await wait_for(all_met)
        await cloud.write(("twin.desired", f"d{i}/mode", b"auto") for i in range(10))
        for gw, store in stores.items():
            await store.write(("twin.reported", f"{gw}-dev{i}/temp", b"20") for i in range(20))
            await store.put("s1.capabilities", f"{gw}/lamp", gw.encode())

        async def everywhere() -> bool:
            for gw, store in stores.items():
                caps = await store.items("s1.capabilities")
                if len(caps) != 3 or len(await store.items("twin.desired")) != 10:
                    return False
                if len(await cloud.items("twin.reported", prefix=f"{gw}-")) != 20:
                    return False
            return True

        await wait_for(everywhere)
        for gw, store in stores.items():
            # other gateways' reported state is not fanned out; capabilities are
            assert set(await store.items("twin.reported")) == {
                f"{gw}-dev{i}/temp" for i in range(20)
            }
            assert {k.split("/")[0] for k in await store.items("s1.capabilities")} == set(GATEWAYS)
            peer = await cloud.peer(gw)
            assert peer is not None
            assert peer.database_id == stores[gw].database_id
            assert peer.received > 0
        # to each gateway: 10 cloud rows + 2 other gateways' capabilities, never its own rows
        assert cloud_sync.engine.stats.rows_sent == 3 * (10 + 2)
        assert all(s.engine.stats.rows_sent == 21 for s in syncs.values())
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for store in [cloud, *stores.values()]:
            await store.close()
