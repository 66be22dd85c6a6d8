"""The shipped Mosquitto configuration: who logs in where, client ids, the per-device ACL.

A gateway's broker has a loopback service listener (``broker.port``: the gateway's clients
under service accounts, each choosing its client id) and device listeners
(``broker.device_port``: device accounts only, the client id replaced by the username).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiomqtt
import pytest

from cybernetic.mosquitto import BrokerError, MosquittoBroker

INGEST_ID = "gw-1-ingest"
"""The gateway's ingest client id (``{gateway id}-ingest``, gateway/ingest.py): a persistent
session that holds every reading queued while the gateway is away."""


def _service(broker: MosquittoBroker, **kwargs: object) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username="gateway",
        password=broker.password("gateway"),
        **kwargs,  # type: ignore[arg-type]
    )


def _device(broker: MosquittoBroker, name: str, **kwargs: object) -> aiomqtt.Client:
    assert broker.device_port is not None
    return aiomqtt.Client(
        broker.host,
        broker.device_port,
        username=name,
        password=broker.password(name),
        **kwargs,  # type: ignore[arg-type]
    )


async def _refused(host: str, port: int, **kwargs: object) -> bool:
    try:
        async with aiomqtt.Client(host, port, **kwargs):  # type: ignore[arg-type]
            return False
    except aiomqtt.MqttError:
        return True


async def _until(client: aiomqtt.Client, last: bytes) -> list[tuple[str, bytes]]:
    """Messages ``client`` receives up to and including the one whose payload is ``last``."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(5):
        async for msg in client.messages:
            got.append((msg.topic.value, bytes(msg.payload)))  # type: ignore[arg-type]
            if msg.payload == last:
                break
    return got


# -- client ids: a device cannot reach the gateway's session ------------------------------------
async def test_a_device_using_the_gateways_client_id_cannot_discard_its_queued_readings(
    broker_factory: Callable[[], MosquittoBroker],
) -> None:
    """Issue 16, finding 3: with the gateway away, a device logged in with its own password,
    the gateway's ingest client id and a clean session. The old configuration (one listener,
    client ids free) let the broker discard the gateway's session and its 1,000 queued
    readings. On the device listener the client id is the device's username, so the
    gateway's session is untouched: all 1,000 are delivered when it comes back."""
    broker = broker_factory()
    name = "dev-h"
    broker.add_device(name, "dev-h-secret")
    async with _service(broker, identifier=INGEST_ID, clean_session=False) as gateway:
        await gateway.subscribe("devices/+/telemetry", qos=1)
    async with _device(broker, name) as dev:
        for i in range(1000):
            await dev.publish(f"devices/{name}/telemetry", b"%d" % i, qos=1)

    # the attack, on the device listener: it logs in, but as client id "dev-h"
    async with _device(broker, name, identifier=INGEST_ID, clean_session=True):
        pass
    # and the listener where client ids are the client's choice does not take its password
    assert await _refused(
        broker.host,
        broker.port,
        username=name,
        password="dev-h-secret",
        identifier=INGEST_ID,
        clean_session=True,
    )

    got: set[bytes] = set()
    async with _service(broker, identifier=INGEST_ID, clean_session=False) as gateway:
        async with asyncio.timeout(15):
            async for msg in gateway.messages:
                got.add(bytes(msg.payload))  # type: ignore[arg-type]
                if len(got) == 1000:
                    break
    assert got == {b"%d" % i for i in range(1000)}  # 0 lost


async def test_a_device_using_the_gateways_client_id_does_not_disconnect_it(
    broker: MosquittoBroker, topic: str
) -> None:
    name = f"{topic}-d"
    broker.add_device(name, "pw")
    ingest = f"{topic}-ingest"
    async with _service(broker, identifier=ingest, clean_session=True) as gateway:
        await gateway.subscribe(f"devices/{name}/telemetry", qos=1)
        async with _device(broker, name, identifier=ingest) as dev:
            await dev.publish(f"devices/{name}/telemetry", b"after", qos=1)
        # the gateway's connection is still the one with that client id: it still receives
        assert await _until(gateway, b"after") == [(f"devices/{name}/telemetry", b"after")]


async def test_a_device_has_one_connection_a_second_login_replaces_the_first(
    broker: MosquittoBroker, topic: str
) -> None:
    """The price of tying client ids to names (docs/trust.md): a device publishes telemetry
    and answers commands over one connection."""
    name = f"{topic}-one"
    broker.add_device(name, "pw")
    first = _device(broker, name)
    await first.__aenter__()
    try:
        async with _device(broker, name):
            await asyncio.sleep(0.3)
            with pytest.raises(aiomqtt.MqttError):
                await first.publish(f"devices/{name}/telemetry", b"x", qos=1, timeout=2)
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await first.__aexit__(None, None, None)


# -- logins: each kind of account on its own listener --------------------------------------------
async def test_a_device_cannot_log_in_on_the_service_listener(
    broker: MosquittoBroker, topic: str
) -> None:
    name = f"{topic}-a"
    broker.add_device(name, "pw-a")
    assert broker.device_port is not None
    assert not await _refused(broker.host, broker.device_port, username=name, password="pw-a")
    assert await _refused(broker.host, broker.port, username=name, password="pw-a")


async def test_a_service_account_cannot_log_in_on_the_device_listener(
    broker: MosquittoBroker,
) -> None:
    assert broker.device_port is not None
    password = broker.password("gateway")
    assert not await _refused(broker.host, broker.port, username="gateway", password=password)
    assert await _refused(broker.host, broker.device_port, username="gateway", password=password)


async def test_wrong_password_is_refused(broker: MosquittoBroker, topic: str) -> None:
    broker.add_device(f"{topic}-a", "pw-a")
    assert broker.device_port is not None
    assert await _refused(broker.host, broker.device_port, username=f"{topic}-a", password="x")


async def test_anonymous_is_refused(broker: MosquittoBroker) -> None:
    assert broker.device_port is not None
    assert await _refused(broker.host, broker.port)
    assert await _refused(broker.host, broker.device_port)


def test_device_names_that_are_service_accounts_or_unsafe_are_refused(
    broker: MosquittoBroker,
) -> None:
    for name in ("gateway", "cloud", "enrol", "", "a/b", "a+", "#", "a:b"):
        with pytest.raises(BrokerError):
            broker.add_device(name, "pw")


# -- the ACL: what a device may write and read ---------------------------------------------------
async def test_a_device_writes_only_its_telemetry_and_its_responses(
    broker: MosquittoBroker, topic: str
) -> None:
    a, b = f"{topic}-a", f"{topic}-b"
    broker.add_device(a, "pw-a")
    broker.add_device(b, "pw-b")
    async with _service(broker) as gateway:
        await gateway.subscribe(f"devices/{a}/#", qos=1)
        await gateway.subscribe(f"devices/{b}/#", qos=1)
        async with _device(broker, a) as dev:
            for forged in (
                f"devices/{a}/commands/c1",  # a command to itself, as if from the gateway
                f"devices/{a}/commands/c1/x",
                f"devices/{b}/telemetry",  # another device's reading
                f"devices/{b}/responses/c1",  # another device's reply
                f"devices/{b}/commands/c1",
                f"devices/{a}/status",  # a topic the gateway does not define
                f"devices/{a}/responses/c1/x",
                f"devices/{a}",
                "cybernetic/gw/gw-1/telemetry",
            ):
                await dev.publish(forged, b"forged", qos=1)
            await dev.publish(f"devices/{a}/telemetry", b"reading", qos=1)
            await dev.publish(f"devices/{a}/responses/c1", b"reply", qos=1)
        got = await _until(gateway, b"reply")
    # the broker drops the forged publishes; the device's own telemetry and reply arrive
    assert got == [(f"devices/{a}/telemetry", b"reading"), (f"devices/{a}/responses/c1", b"reply")]


async def test_a_device_reads_only_its_commands(broker: MosquittoBroker, topic: str) -> None:
    a, b = f"{topic}-a", f"{topic}-b"
    broker.add_device(a, "pw-a")
    broker.add_device(b, "pw-b")
    async with _device(broker, a) as dev:
        for pattern in (
            f"devices/{a}/commands/+",
            f"devices/{a}/#",
            f"devices/{b}/#",
            "devices/+/telemetry",
            "#",
        ):
            await dev.subscribe(pattern, qos=1)
        async with _service(broker) as gateway:
            for other in (
                f"devices/{b}/commands/c1",  # another device's command
                f"devices/{a}/telemetry",
                f"devices/{a}/responses/c1",
                f"devices/{b}/telemetry",
                f"{topic}/elsewhere",
            ):
                await gateway.publish(other, b"not for a", qos=1)
            await gateway.publish(f"devices/{a}/commands/c2", b"command", qos=1)
        got = await _until(dev, b"command")
    # overlapping subscriptions may deliver it more than once; only its own command arrives
    assert set(got) == {(f"devices/{a}/commands/c2", b"command")}
