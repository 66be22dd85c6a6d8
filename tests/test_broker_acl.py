"""The shipped Mosquitto configuration: authentication and the per-device ACL."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from cybernetic.mosquitto import MosquittoBroker


async def _collect(
    broker: MosquittoBroker, topic: str, publish_as: tuple[str, str], target: str
) -> list[bytes]:
    got: list[bytes] = []
    async with aiomqtt.Client(
        broker.host, broker.port, username="gateway", password=broker.password("gateway")
    ) as watcher:
        await watcher.subscribe(f"devices/+/{topic}", qos=1)
        async with aiomqtt.Client(
            broker.host, broker.port, username=publish_as[0], password=publish_as[1]
        ) as dev:
            await dev.publish(f"devices/{target}/{topic}", b"x", qos=1)
            await dev.publish(f"devices/{publish_as[0]}/{topic}", b"own", qos=1)
        async with asyncio.timeout(5):
            async for msg in watcher.messages:
                got.append(bytes(msg.payload))  # type: ignore[arg-type]
                if msg.payload == b"own":
                    break
    return got


async def test_device_cannot_publish_under_another_devices_topic(
    broker: MosquittoBroker, topic: str
) -> None:
    broker.add_user(f"{topic}-a", "pw-a")
    got = await _collect(broker, topic, (f"{topic}-a", "pw-a"), f"{topic}-b")
    # the forged publish is dropped by the broker; the device's own publish arrives
    assert got == [b"own"]


async def test_wrong_password_is_refused(broker: MosquittoBroker, topic: str) -> None:
    broker.add_user(f"{topic}-a", "pw-a")
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, username=f"{topic}-a", password="nope"):
            pass


async def test_anonymous_is_refused(broker: MosquittoBroker) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port):
            pass
