"""Ingest on its MQTT session, over the in-memory broker (the session conformance suite
holds it to Mosquitto's behaviour): readings are acknowledged only once stored, and what the
broker delivers again after a lost connection is neither stored nor observed twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from amcp.runtime.membroker import MemoryBroker
from amcp.runtime.session import SessionSpec, connect_once
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.wire.telemetry import Reading
from gateway.config import IngestSettings
from gateway.ingest import Ingest
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox, OutboxSettings

BROKER = BrokerLink(reconnect_initial=0.01, reconnect_max=0.05)
CLIENT = "gw-t-ingest"


class Seen:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.hook: Callable[[], None] | None = None

    def __call__(self, readings: list[Reading]) -> None:
        self.seqs.extend(r.seq for r in readings)
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()


async def publish(broker: MemoryBroker, seqs: range) -> None:
    async with connect_once(broker.transport, BROKER, SessionSpec("dev-1")) as link:
        for seq in seqs:
            body = msgspec.json.encode({"seq": seq, "boot": "b1", "values": {"v": seq}})
            await link.publish("devices/dev-1/telemetry", body, qos=1)


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - polls state the code under test owns
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, broker: MemoryBroker, seen: Seen
) -> AsyncIterator[tuple[Ingest, Outbox, GatewayMetrics]]:
    outbox = Outbox(tmp_path / "outbox.sqlite3", OutboxSettings())
    await outbox.open()
    metrics = GatewayMetrics()
    ingest = Ingest(
        IngestSettings(batch_interval=0.001),
        outbox,
        metrics,
        broker=BROKER,
        client_id=CLIENT,
        observers=[seen],
        transport=broker.transport,
    )
    task = asyncio.create_task(ingest.run(ChildContext("ingest")))
    try:
        await until(lambda: ingest.connected)
        yield ingest, outbox, metrics
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


def unacked(broker: MemoryBroker) -> int:
    return broker.unacked(CLIENT)


async def test_readings_are_acknowledged_once_stored(tmp_path: Path, broker: MemoryBroker) -> None:
    seen = Seen()
    async with running(tmp_path, broker, seen) as (_, outbox, _):
        await publish(broker, range(1, 201))
        await until(lambda: outbox.snapshot().rows == 200 and unacked(broker) == 0)
    assert seen.seqs == list(range(1, 201))


async def test_what_comes_again_after_a_lost_connection_is_stored_and_observed_once(
    tmp_path: Path, broker: MemoryBroker
) -> None:
    """The link dies between a commit and its PUBACKs: the broker delivers those messages
    again on the next connection; they are acknowledged, not stored or observed again."""
    seen = Seen()
    committed: list[int] = []

    def lose_the_link() -> None:  # right after the first commit, before its PUBACKs
        committed.append(len(seen.seqs))
        broker.drop(CLIENT)

    seen.hook = lose_the_link
    async with running(tmp_path, broker, seen) as (ingest, outbox, metrics):
        await publish(broker, range(1, 51))
        await until(lambda: ingest.session.connects == 2)
        await publish(broker, range(51, 101))
        await until(lambda: outbox.snapshot().rows == 100 and unacked(broker) == 0)
        assert metrics.redelivered._value.get() == committed[0] > 0
    assert sorted(seen.seqs) == list(range(1, 101))  # each once


async def test_readings_sent_while_the_gateway_is_away_wait_in_its_session(
    tmp_path: Path, broker: MemoryBroker
) -> None:
    seen = Seen()
    async with running(tmp_path, broker, seen) as (_, outbox, _):
        await publish(broker, range(1, 11))
        await until(lambda: outbox.snapshot().rows == 10)
    await publish(broker, range(11, 31))  # ingest is stopped: its persistent session queues
    async with running(tmp_path, broker, seen) as (_, outbox, _):
        await until(lambda: outbox.snapshot().rows == 30)
    assert seen.seqs == list(range(1, 31))
