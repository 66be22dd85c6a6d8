"""Sync on its MQTT sessions over the in-memory broker (fast; the real-broker tests beside
this one make the end-to-end claims): both sides converge, and converge again after the
broker dies with frames in flight and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from amcp.link import CloudLinks, GatewayLink
from amcp.runtime.membroker import MemoryBroker
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext, stop_task
from amcp.store import Store
from amcp.sync import CloudSync, GatewaySync
from tests.amcp.sync.sync_support import FAST, fingerprint, wait_converged

BROKER = BrokerLink(reconnect_initial=0.01, reconnect_max=0.1)


@contextlib.asynccontextmanager
async def syncing(tmp_path: Path, broker: MemoryBroker) -> AsyncIterator[tuple[Store, Store]]:
    secret = os.urandom(32)
    gw = await Store(tmp_path / "gw.db", site="gw-1").open()
    cloud = await Store(tmp_path / "cloud.db", site="cloud").open()
    gw_link = GatewayLink("gw-1", secret, None)
    cloud_links = CloudLinks(lambda g: secret if g == "gw-1" else None, None)
    sides = [
        CloudSync(FAST, cloud, cloud_links, BROKER, transport=broker.transport),
        GatewaySync(FAST, gw, gw_link, BROKER, gateway="gw-1", transport=broker.transport),
    ]
    tasks = [asyncio.create_task(s.run(ChildContext("sync"))) for s in sides]
    try:
        yield gw, cloud
    finally:
        for task in tasks:
            assert await stop_task(task, grace=5.0)
        await gw.close()
        await cloud.close()
        gw_link.close()
        cloud_links.close()


async def test_both_sides_converge_and_again_after_a_broker_outage(tmp_path: Path) -> None:
    broker = MemoryBroker()
    async with syncing(tmp_path, broker) as (gw, cloud):
        await gw.write(("twin.reported", f"d/{i}", b"r") for i in range(300))
        await cloud.write(("twin.desired", f"d/{i}", b"d") for i in range(200))
        await wait_converged(gw, cloud, within=20)
        await gw.write(("twin.reported", f"e/{i}", b"r") for i in range(300))
        broker.kill()  # frames of that write are lost with it
        await cloud.write(("twin.desired", f"e/{i}", b"d") for i in range(100))
        await asyncio.sleep(0.2)
        broker.start()
        await wait_converged(gw, cloud, within=20)
        rows, _, _ = await fingerprint(cloud)
    assert rows == 900
