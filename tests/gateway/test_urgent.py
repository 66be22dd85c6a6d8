"""The urgent lane on the in-memory broker with the real uplink, cloud ingest and stores: an
algedonic signal raised behind a 50,000-reading backlog reaches the cloud's store first, once;
a storm of alerts beyond the lane's bound moves to the ordinary queue, losing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
from prometheus_client import CollectorRegistry

from amcp.link import CloudLinks, GatewayLink, secrets_in_dir
from amcp.runtime.membroker import MemoryBroker
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.wire.telemetry import EventRecord, Reading
from cloud.config import CloudIngestSettings
from cloud.ingest import CloudIngest
from cloud.readings import ReadingStore, count_readings
from gateway.config import UplinkSettings
from gateway.events import EventWriter
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox, OutboxSettings, encode_row
from gateway.uplink import Uplink
from gateway.urgent import UrgentLane

GATEWAY = "gw-urgent"
BROKER = BrokerLink(reconnect_initial=0.01, reconnect_max=0.05)


async def until(predicate: Callable[[], bool], within: float = 30) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls state the code under test owns
            await asyncio.sleep(0.005)


def pain() -> EventRecord:
    return EventRecord("algedonic", 1, "dev-9", "critical", {"reason": "smoke"}, urgent=True)


def cloud_events(path: Path) -> list[str]:
    import sqlite3  # noqa: PLC0415 - reading the cloud's file as a test

    with contextlib.closing(sqlite3.connect(path)) as db:
        return [n for (n,) in db.execute("SELECT name FROM events")]


@contextlib.asynccontextmanager
async def gateway_parts(tmp_path: Path) -> AsyncIterator[tuple[Outbox, UrgentLane, EventWriter]]:
    outbox = Outbox(tmp_path / "outbox.sqlite3", OutboxSettings())
    lane = UrgentLane(tmp_path / "urgent.sqlite3", max_rows=5)
    await outbox.open()
    await lane.open()
    writer = EventWriter(outbox.append_events, urgent=lane)
    task = asyncio.create_task(writer.run(ChildContext("events")))
    try:
        yield outbox, lane, writer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await lane.close()
        await outbox.close()


async def test_an_algedonic_signal_overtakes_a_50000_reading_backlog(tmp_path: Path) -> None:
    broker = MemoryBroker()
    links = tmp_path / "links"
    links.mkdir()
    secret = os.urandom(32)
    (links / GATEWAY).write_text(secret.hex())
    store = ReadingStore(tmp_path / "readings.sqlite3")
    await store.open()
    gw_link = GatewayLink(GATEWAY, secret, None)
    cloud_links = CloudLinks(secrets_in_dir(links), None)
    async with gateway_parts(tmp_path) as (outbox, lane, writer):
        bodies = [encode_row(Reading("dev-1", "b", s, s, {"v": s})) for s in range(50_000)]
        await outbox.append_readings(bodies)
        writer.submit([pain()])
        await until(lambda: lane.rows == 1)
        uplink = Uplink(
            UplinkSettings(broker=BROKER, link_secret_file=str(links / GATEWAY)),
            outbox,
            GatewayMetrics(),
            gw_link,
            gateway=GATEWAY,
            urgent=lane,
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
            asyncio.create_task(cloud.run(ChildContext("cloud"))),
            asyncio.create_task(uplink.run(ChildContext("uplink"))),
        ]
        try:
            await until(lambda: "algedonic" in cloud_events(store.path))
            readings_before_it = count_readings(store.path)
            await until(lambda: outbox.snapshot().rows == 0, within=120)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert readings_before_it < 10_000  # at most the window of batches sent with it
    assert cloud_events(store.path).count("algedonic") == 1
    assert count_readings(store.path) == 50_000
    assert lane.rows == 0
    await store.close()
    gw_link.close()
    cloud_links.close()


async def test_a_storm_of_alerts_moves_to_the_ordinary_queue_and_loses_nothing(
    tmp_path: Path,
) -> None:
    async with gateway_parts(tmp_path) as (outbox, lane, writer):
        writer.submit([pain() for _ in range(12)])  # the lane holds 5
        await until(lambda: writer.written == 12 and lane.over == 0)
        assert lane.rows == 5
        batch = await outbox.next_batch(100)
        assert batch is not None
        moved = [msgspec.msgpack.decode(b, type=EventRecord) for b in batch.events]
        assert len(moved) == 7
        assert all(e.name == "algedonic" for e in moved)
