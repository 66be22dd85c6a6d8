"""Simulated devices: publish telemetry the way a field device would (tests, demo, benchmarks)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

import aiomqtt

from amcp.wire import topics


def reading_payload(seq: int, boot: str, **values: float) -> bytes:
    return json.dumps(
        {"seq": seq, "boot": boot, "ts": int(time.time() * 1000), "values": values}
    ).encode()


async def publish_readings(
    host: str,
    port: int,
    device: str,
    password: str,
    seqs: Iterable[int],
    *,
    boot: str = "b1",
    rate: float | None = None,
    window: int = 200,
) -> int:
    """Publish one reading per seq at QoS 1, ``window`` in flight, optionally paced to ``rate``/s.

    Returns the number published (each acknowledged by the broker). Publishes go straight to
    paho, without aiomqtt's future and task per message: a load generator that spends 90 us
    a message (measured) would be the bottleneck it is meant to measure, and the time its
    readings wait in its own queue would count as the gateway's latency.
    """
    sent = 0
    start = time.monotonic()
    async with aiomqtt.Client(
        host, port, username=device, password=password, max_inflight_messages=window
    ) as client:
        paho = getattr(client, "_client", None)
        disconnected = getattr(client, "_disconnected", None)
        if paho is None or not isinstance(disconnected, asyncio.Future):
            raise RuntimeError("aiomqtt internals changed: _client / _disconnected missing")
        acked = 0
        room = asyncio.Event()
        aiomqtt_on_publish = paho.on_publish

        def on_publish(*args: Any) -> None:
            nonlocal acked
            acked += 1
            room.set()
            aiomqtt_on_publish(*args)

        paho.on_publish = on_publish

        async def wait_acked(below: int) -> None:
            while sent - acked > below:
                room.clear()
                waiter = asyncio.ensure_future(room.wait())
                await asyncio.wait({waiter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
                if disconnected.done():
                    waiter.cancel()
                    raise aiomqtt.MqttError(f"{device}: disconnected with {sent - acked} unacked")

        topic = topics.device_telemetry(device)
        for seq in seqs:
            await wait_acked(window - 1)
            info = paho.publish(
                topic, reading_payload(seq, boot, temp=20.0 + seq % 10, load=seq % 100), qos=1
            )
            if info.rc != 0:
                raise aiomqtt.MqttError(f"{device}: publish failed (paho rc {info.rc})")
            sent += 1
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await wait_acked(0)
    return sent
