"""Gateway to cloud over the in-memory broker, fast: the uplink, the real cloud ingest and
both real SQLite stores, signed envelopes on the way. Readings in the outbox reach the
cloud's store exactly once, also when the broker dies with batches and acks in flight."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from amcp.link import CloudLinks, GatewayLink, secrets_in_dir
from amcp.runtime.membroker import MemoryBroker
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.wire.telemetry import Reading
from cloud.config import CloudIngestSettings
from cloud.ingest import CloudIngest
from cloud.readings import ReadingStore, reading_keys
from gateway.config import UplinkSettings
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox, OutboxSettings, encode_row
from gateway.uplink import Uplink

GATEWAY = "gw-mem"
BROKER = BrokerLink(reconnect_initial=0.01, reconnect_max=0.05)


async def until(predicate: Callable[[], bool], within: float = 15) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls state the code under test owns
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def tiers(tmp_path: Path, broker: MemoryBroker) -> AsyncIterator[tuple[Outbox, Path]]:
    links = tmp_path / "links"
    links.mkdir()
    secret = os.urandom(32)
    (links / GATEWAY).write_text(secret.hex())
    outbox = Outbox(tmp_path / "outbox.sqlite3", OutboxSettings())
    store = ReadingStore(tmp_path / "readings.sqlite3")
    await outbox.open()
    await store.open()
    gw_link = GatewayLink(GATEWAY, secret, None)
    cloud_links = CloudLinks(secrets_in_dir(links), None)
    uplink_settings = UplinkSettings(
        broker=BROKER,
        link_secret_file=str(links / GATEWAY),
        batch_max=50,
        window=4,
        ack_timeout=1.0,
        batch_interval=0.001,
    )
    uplink = Uplink(
        uplink_settings,
        outbox,
        GatewayMetrics(),
        gw_link,
        gateway=GATEWAY,
        transport=broker.transport,
    )
    cloud = CloudIngest(
        CloudIngestSettings(),
        store,
        CollectorRegistry(),
        cloud_links,
        broker=BROKER,
        transport=broker.transport,
    )
    tasks = [
        asyncio.create_task(cloud.run(ChildContext("cloud-ingest"))),
        asyncio.create_task(uplink.run(ChildContext("uplink"))),
    ]
    try:
        await until(lambda: cloud.connected and uplink.connected)
        yield outbox, store.path
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await outbox.close()
        await store.close()
        gw_link.close()
        cloud_links.close()


async def fill(outbox: Outbox, seqs: range) -> None:
    bodies = [encode_row(Reading("dev-1", "b1", s, 1000 + s, {"v": s}, 2000 + s)) for s in seqs]
    await outbox.append_readings(bodies)


async def test_every_reading_reaches_the_cloud_once(tmp_path: Path) -> None:
    broker = MemoryBroker()
    async with tiers(tmp_path, broker) as (outbox, cloud_db):
        await fill(outbox, range(1, 1001))
        await until(lambda: outbox.snapshot().rows == 0)
        keys = reading_keys(cloud_db)
    assert sorted(seq for _, _, seq in keys) == list(range(1, 1001))


async def test_a_broker_outage_with_batches_in_flight_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    broker = MemoryBroker()
    async with tiers(tmp_path, broker) as (outbox, cloud_db):
        await fill(outbox, range(1, 2001))
        await until(lambda: outbox.snapshot().rows < 2000)  # batches on their way
        broker.kill()
        await asyncio.sleep(0.1)
        await fill(outbox, range(2001, 2501))  # the gateway goes on taking readings
        broker.start()
        await until(lambda: outbox.snapshot().rows == 0)
        keys = reading_keys(cloud_db)
    assert len(keys) == len(set(keys))
    assert sorted(seq for _, _, seq in keys) == list(range(1, 2501))


async def test_apply_changes_batching_at_once_and_names_what_needs_a_restart(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "link"
    secret.write_text("00" * 32)
    secret.chmod(0o600)
    running = UplinkSettings(link_secret_file=str(secret))
    outbox = Outbox(tmp_path / "outbox.sqlite3", OutboxSettings())
    uplink = Uplink(
        running,
        outbox,
        GatewayMetrics(),
        GatewayLink(GATEWAY, bytes(32), None),
        gateway=GATEWAY,
        transport=MemoryBroker().transport,
    )
    edited = UplinkSettings(
        link_secret_file=str(secret),
        window=2,
        batch_max=10,
        broker=BrokerLink(host="cloud.example"),
    )
    assert uplink.apply(edited) == ["broker"]
    assert (uplink.settings.window, uplink.settings.batch_max) == (2, 10)
    assert uplink.settings.broker == running.broker  # the running connection is kept
