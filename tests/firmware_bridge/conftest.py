"""Helpers: the bridge against a real Mosquitto, a telemetry listener on the same broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import SessionSpec, connect_once
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from cybernetic.mosquitto import MosquittoBroker, free_port
from firmware_bridge.settings import BridgeSettings
from gateway.bridge import Bridge


def gateway_link(broker: MosquittoBroker) -> BrokerLink:
    return BrokerLink(
        host=broker.host,
        port=broker.port,
        username="gateway",
        password=broker.password("gateway"),
        reconnect_initial=0.05,
        reconnect_max=0.5,
    )


class Listener:
    """Every telemetry message of the broker, decoded."""

    def __init__(self) -> None:
        self.readings: list[tuple[str, dict[str, Any]]] = []
        self.new = asyncio.Event()

    async def wait_for(self, check: Any, within: float = 15.0) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(within):
            seen = 0
            while True:
                for item in self.readings[seen:]:
                    if check(*item):
                        return item
                seen = len(self.readings)
                self.new.clear()
                await self.new.wait()


@contextlib.asynccontextmanager
async def listening(broker: MosquittoBroker) -> AsyncIterator[Listener]:
    listener = Listener()
    spec = SessionSpec(f"listen-{free_port()}", ("devices/+/telemetry",))
    async with connect_once(MqttTransport(), gateway_link(broker), spec) as link:

        async def pump() -> None:
            async for m in link.messages():
                listener.readings.append((m.topic.split("/")[1], msgspec.json.decode(m.payload)))
                listener.new.set()

        task = asyncio.create_task(pump())
        try:
            yield listener
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@contextlib.asynccontextmanager
async def running_bridge(
    broker: MosquittoBroker, devices: list[dict[str, Any]], **settings: Any
) -> AsyncIterator[Bridge]:
    config = BridgeSettings(devices=devices, reconnect_initial=0.1, reconnect_max=0.5, **settings)
    bridge = Bridge(config, gateway_link(broker), client_id=f"bridge-{free_port()}")
    ctx = ChildContext("bridge")
    task = asyncio.create_task(bridge.run(ctx))
    try:
        async with asyncio.timeout(10):
            await ctx.wait_ready()
        yield bridge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Any, within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls state the code under test owns
            await asyncio.sleep(0.05)


@pytest.fixture
def port() -> int:
    return free_port()
