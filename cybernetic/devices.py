"""Simulated devices: publish telemetry the way a field device would (tests, demo, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable

from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import LinkLostError, SessionSpec
from amcp.runtime.settings import BrokerLink
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

    Returns the number published (each acknowledged by the broker). Publishes take the
    transport's fast path (:meth:`~amcp.runtime.mqtt.MqttConnection.publish_nowait`): a load
    generator that spends 90 us a message would be the bottleneck it is meant to measure, and
    the time its readings wait in its own queue would count as the gateway's latency. A lost
    or refused connection raises :class:`~amcp.runtime.session.LinkLostError`.
    """
    sent = 0
    start = time.monotonic()
    login = BrokerLink(host=host, port=port, username=device, password=password)
    conn = await MqttTransport(max_inflight_messages=window).connect(
        login, SessionSpec(device), None
    )
    try:

        async def wait_acked(below: int) -> None:
            while True:
                conn.acked_changed.clear()  # before looking: paho's callbacks run on this loop
                if sent - conn.acked <= below:
                    return
                if conn.lost:
                    raise LinkLostError(f"{device}: disconnected with {sent - conn.acked} unacked")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await conn.acked_changed.wait()

        topic = topics.device_telemetry(device)
        for seq in seqs:
            await wait_acked(window - 1)
            payload = reading_payload(seq, boot, temp=20.0 + seq % 10, load=seq % 100)
            conn.publish_nowait(topic, payload, qos=1)
            sent += 1
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await wait_acked(0)
    finally:
        await conn.close()
    return sent
