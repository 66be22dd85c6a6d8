"""Simulated devices: publish telemetry the way a field device would (tests, demo, benchmarks)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable

import aiomqtt


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

    Returns the number published (each acknowledged by the broker).
    """
    sent = 0
    start = time.monotonic()
    async with aiomqtt.Client(
        host,
        port,
        username=device,
        password=password,
        max_inflight_messages=window,
    ) as client:
        client.pending_calls_threshold = window * 2  # many QoS 1 publishes in flight is the point
        pending: set[asyncio.Task[None]] = set()
        for seq in seqs:
            payload = reading_payload(seq, boot, temp=20.0 + seq % 10, load=seq % 100)
            pending.add(
                asyncio.create_task(client.publish(f"devices/{device}/telemetry", payload, qos=1))
            )
            sent += 1
            if len(pending) >= window:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        if pending:
            await asyncio.gather(*pending)
    return sent
