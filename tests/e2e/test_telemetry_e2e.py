"""Telemetry end to end through real brokers and real daemon processes.

Every reading a device published must be in the cloud store exactly once: through many
connections, a cloud broker outage, repeated SIGKILLs of the gateway and bad traffic.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from amcp.wire.telemetry import Reading
from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape


def _expected(devices: dict[str, int], boot: str = "b1") -> set[tuple[str, str, int]]:
    return {(d, boot, s) for d, n in devices.items() for s in range(1, n + 1)}


async def _publish_all(
    stack: Stack, devices: dict[str, str], n: int, rate: float | None = None
) -> None:
    await asyncio.gather(
        *(
            publish_readings(
                stack.edge.host, stack.edge.device_port, d, pw, range(1, n + 1), rate=rate
            )
            for d, pw in devices.items()
        )
    )


def _diagnose(stack: Stack) -> str:
    with sqlite3.connect(stack.cloud_db) as db:
        per_device = db.execute(
            "SELECT device, count(*), min(seq), max(seq) FROM readings GROUP BY device"
        ).fetchall()
    g = {k: v for k, v in scrape(stack.gateway_metrics).items() if k.startswith("cybernetic")}
    c = {k: v for k, v in scrape(stack.cloud_metrics).items() if k.startswith("cybernetic")}
    return f"cloud per device {per_device}\ngateway {g}\ncloud {c}\n" + stack.log("gateway")[-2000:]


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    s = Stack(tmp_path / "stack")
    yield s  # type: ignore[misc]
    s.close()


async def test_ten_thousand_readings_from_several_connections_arrive_exactly_once(
    stack: Stack,
) -> None:
    devices = {f"dev-{i}": stack.add_device(f"dev-{i}") for i in range(5)}
    stack.start()
    await asyncio.to_thread(stack.wait_gateway_ready)
    await _publish_all(stack, devices, 2000)
    count = await asyncio.to_thread(stack.wait_cloud_count, 10_000, 90)
    assert count == 10_000, _diagnose(stack)
    assert set(stack.cloud_keys()) == _expected(dict.fromkeys(devices, 2000))
    # the outbox is empty once everything is acknowledged
    await asyncio.sleep(0.5)
    g = scrape(stack.gateway_metrics)
    assert g["cybernetic_outbox_rows"] == 0


@pytest.mark.slow
async def test_cloud_broker_outage_of_30_seconds_loses_nothing(stack: Stack) -> None:
    devices = {f"dev-{i}": stack.add_device(f"dev-{i}") for i in range(3)}
    stack.start()
    await asyncio.to_thread(stack.wait_gateway_ready)

    async def outage() -> None:
        await asyncio.sleep(2)
        stack.cloud_broker.stop()
        await asyncio.sleep(10)
        # during the outage readings pile up in the outbox, nothing is lost
        g = await asyncio.to_thread(scrape, stack.gateway_metrics)
        assert g["cybernetic_uplink_connected"] == 0
        assert g["cybernetic_outbox_rows"] > 0
        await asyncio.sleep(20)
        stack.cloud_broker.start()

    # 3 devices x 100 readings/s for ~36 s: the stream spans the whole outage
    await asyncio.gather(outage(), _publish_all(stack, devices, 3600, rate=100))
    count = await asyncio.to_thread(stack.wait_cloud_count, 3 * 3600, 90)
    assert count == 3 * 3600
    assert set(stack.cloud_keys()) == _expected(dict.fromkeys(devices, 3600))


@pytest.mark.slow
async def test_gateway_killed_repeatedly_loses_and_duplicates_nothing(stack: Stack) -> None:
    devices = {f"dev-{i}": stack.add_device(f"dev-{i}") for i in range(4)}
    stack.start()
    await asyncio.to_thread(stack.wait_gateway_ready)

    async def killer() -> None:
        for _ in range(4):
            await asyncio.sleep(1.5)
            stack.kill_gateway()  # SIGKILL: no shutdown, as a crash or power cut
            await asyncio.sleep(0.5)
            stack.start_gateway()

    await asyncio.gather(killer(), _publish_all(stack, devices, 2500, rate=300))
    count = await asyncio.to_thread(stack.wait_cloud_count, 4 * 2500, 90)
    await asyncio.sleep(1)  # a late duplicate would show up here
    keys = stack.cloud_keys()
    assert count == len(keys) == 4 * 2500
    assert set(keys) == _expected(dict.fromkeys(devices, 2500))


async def test_outbox_cap_applies_policy_counts_drops_and_stays_up(tmp_path: Path) -> None:
    # nothing but these readings may go into the outbox: no rules, and no load signals (a
    # busy CI machine would otherwise tighten S2's limits and put that event in the outbox)
    stack = Stack(
        tmp_path / "s",
        gateway={
            "outbox": {"max_bytes": 20_000, "overflow": "drop-oldest"},
            "s2": {"limits": {"adaptive": {"signals": {}}}},
        },
    )
    try:
        dev = stack.add_device("dev-cap")
        stack.start_brokers()
        stack.start_gateway()  # no cloud process: nothing is acknowledged, the outbox fills
        stack.cloud_broker.stop()
        await asyncio.to_thread(stack.wait_gateway_ready)
        await publish_readings(
            stack.edge.host, stack.edge.device_port, "dev-cap", dev, range(1, 1001)
        )
        deadline = time.monotonic() + 60  # generous for a loaded CI machine; success ends early
        g: dict[str, float] = {}
        while time.monotonic() < deadline:
            g = scrape(stack.gateway_metrics)
            kept = g.get("cybernetic_outbox_rows", 0)
            if kept + g.get("cybernetic_outbox_dropped_readings_total", 0) >= 1000:
                break
            await asyncio.sleep(0.2)
        assert g["cybernetic_ingest_messages_total"] == 1000, (g, stack.log("gateway")[-3000:])
        assert 0 < g["cybernetic_outbox_bytes"] <= 20_000
        dropped = g["cybernetic_outbox_dropped_readings_total"]
        assert dropped > 0
        # every reading is accounted for: kept, or dropped and counted
        assert g["cybernetic_outbox_rows"] + dropped == 1000
        with sqlite3.connect(stack.outbox_db) as db:
            counts = dict(db.execute("SELECT reason, count FROM drops"))
            bodies = [row[0] for row in db.execute("SELECT body FROM outbox ORDER BY id")]
        assert counts == {"overflow_oldest": dropped}
        # the oldest went first: what is left is the newest readings, in order
        seqs = [msgspec.msgpack.decode(b, type=Reading).seq for b in bodies]
        assert seqs == list(range(1001 - len(seqs), 1001))
        assert stack.gateway_proc is not None
        assert stack.gateway_proc.poll() is None
    finally:
        stack.close()


async def test_bad_payloads_are_refused_with_reasons_while_good_traffic_flows(
    tmp_path: Path,
) -> None:
    stack = Stack(
        tmp_path / "s",
        gateway={"ingest": {"devices": ["good", "noisy"], "max_payload_bytes": 1024}},
    )
    try:
        good = stack.add_device("good")
        noisy = stack.add_device("noisy")
        stranger = stack.add_device("stranger")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)

        async def bad_traffic() -> None:
            async with aiomqtt.Client(
                stack.edge.host, stack.edge.device_port, username="noisy", password=noisy
            ) as c:
                for i in range(20):
                    await c.publish("devices/noisy/telemetry", b"{not json", qos=1)
                    await c.publish("devices/noisy/telemetry", b'{"seq": "x", "t": 1}', qos=1)
                    await c.publish(
                        "devices/noisy/telemetry", b'{"v": "' + b"x" * 2000 + b'"}', qos=1
                    )
                    await c.publish("devices/noisy/telemetry", f'{{"seq": {i + 1}, "t": 1}}', qos=1)
            async with aiomqtt.Client(
                stack.edge.host, stack.edge.device_port, username="stranger", password=stranger
            ) as c:
                for _ in range(5):
                    await c.publish("devices/stranger/telemetry", b'{"t": 1}', qos=1)

        await asyncio.gather(
            bad_traffic(),
            publish_readings(stack.edge.host, stack.edge.device_port, "good", good, range(1, 501)),
        )
        assert await asyncio.to_thread(stack.wait_cloud_count, 520, 30) == 520
        await asyncio.sleep(0.5)
        g = scrape(stack.gateway_metrics)
        assert g["cybernetic_ingest_rejected_total"] == 65
        with sqlite3.connect(stack.outbox_db) as db:
            reasons = dict(db.execute("SELECT reason, count(*) FROM dead_letters GROUP BY reason"))
        assert reasons == {"malformed": 20, "bad_shape": 20, "oversized": 20, "unknown_device": 5}
        assert stack.gateway_proc is not None
        assert stack.gateway_proc.poll() is None
    finally:
        stack.close()


async def test_backlog_queued_while_the_gateway_was_down_arrives_to_the_last_reading(
    stack: Stack,
) -> None:
    """A backlog that is not a whole number of commit batches: the tail must not wait for a
    next reading that may never come."""
    dev = stack.add_device("dev-backlog")
    stack.start()
    await asyncio.to_thread(stack.wait_gateway_ready)
    stack.stop_gateway()  # its persistent session keeps collecting readings in the broker
    await publish_readings(
        stack.edge.host, stack.edge.device_port, "dev-backlog", dev, range(1, 751)
    )
    stack.start_gateway()
    assert await asyncio.to_thread(stack.wait_cloud_count, 750, 60) == 750, _diagnose(stack)
