"""S2 fed through a real Mosquitto broker: limits, zombies and stuck sensors end to end.

One publisher sends a simulated ten seconds of telemetry (msgpack ``Reading`` with the
simulated send time in ``ts_ms``) in time order; the gateway side decodes each message and sets
the controllable clock from ``ts_ms`` before handing it to S2, so decisions are deterministic
while every byte still travels through the broker.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import msgspec

from amcp.wire.telemetry import Reading
from cybernetic.mosquitto import MosquittoBroker
from gateway.s2.admission import RateGate
from gateway.s2.config import LimitsConfig, PhiConfig, RateLimit, StuckConfig
from gateway.s2.events import S2Event, SensorStuck, ZombieDeclared
from gateway.s2.stuck import StuckDetector
from gateway.s2.zombies import ZombieDetector

START_MS = 1_700_000_000_000


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _stream(prefix: str) -> list[Reading]:
    """10 s: five quiet devices at 5/s (q4 dies at 5 s, q3's sensor is frozen), a flood at 200/s."""
    readings: list[Reading] = []
    for ms in range(0, 10_000, 5):
        if ms % 200 == 0:
            for i in range(5):
                if i == 4 and ms >= 5_000:
                    continue
                value = 20.0 if i == 3 else 20.0 + (ms % 1000) / 1000 + i
                readings.append(Reading(f"{prefix}-q{i}", "b", ms, START_MS + ms, {"t": value}))
        readings.append(Reading(f"{prefix}-flood", "b", ms, START_MS + ms, {"t": ms / 1000}))
    return readings


async def test_flood_limited_zombie_declared_stuck_flagged_over_mqtt(
    broker: MosquittoBroker, topic: str
) -> None:
    clock = Clock()
    events: list[S2Event] = []
    gate = RateGate(LimitsConfig(device=RateLimit(rate=10, burst=10)), clock, emit=events.append)
    zombies = ZombieDetector(PhiConfig(), clock, emit=events.append)
    stuck = StuckDetector(StuckConfig(min_samples=10, min_duration_s=5), clock, emit=events.append)
    stream = _stream(topic)
    passed: dict[str, int] = {}
    decoder = msgspec.msgpack.Decoder(Reading)
    creds = {"username": "gateway", "password": broker.password("gateway")}

    async with aiomqtt.Client(broker.host, broker.port, **creds) as gateway:
        await gateway.subscribe("devices/+/telemetry", qos=1)
        async with aiomqtt.Client(broker.host, broker.port, **creds) as devices:
            for reading in stream:
                payload = msgspec.msgpack.encode(reading)
                await devices.publish(f"devices/{reading.device}/telemetry", payload, qos=1)
        seen = 0
        async with asyncio.timeout(30):
            async for message in gateway.messages:
                if not message.topic.value.startswith(f"devices/{topic}-"):
                    continue  # another test's devices on the shared broker
                assert isinstance(message.payload, bytes)
                reading = decoder.decode(message.payload)
                clock.now = (reading.ts_ms - START_MS) / 1000
                zombies.heartbeats([reading.device])
                if gate.admit_devices([reading.device])[0]:
                    passed[reading.device] = passed.get(reading.device, 0) + 1
                    stuck.observe(reading.device, reading.values)
                zombies.check()
                seen += 1
                if seen == len(stream):
                    break

    for i in range(4):
        assert passed[f"{topic}-q{i}"] == 50  # every quiet reading passed
    assert passed[f"{topic}-q4"] == 25
    assert 100 <= passed[f"{topic}-flood"] <= 110  # 10/s for 10 s plus the burst
    declared = [e for e in events if isinstance(e, ZombieDeclared)]
    assert [e.unit for e in declared] == [f"{topic}-q4"]
    # 0.2 s cadence: declared after 0.2 + 3 (pause) + 5.22 * 0.1 s of silence, at the latest
    # by the first reading of another device after that (every 5 ms here).
    assert 3.7 <= declared[0].silent_s <= 3.8
    flagged = [(e.device, e.metric) for e in events if isinstance(e, SensorStuck)]
    assert flagged == [(f"{topic}-q3", "t")]
