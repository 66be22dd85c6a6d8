"""Heartbeats up, with the real daemons and brokers: the cloud's fleet table shows the gateway
alive with what it reported; a SIGKILLed gateway is marked lost within the configured bound,
and alive again when it comes back (`cybernetic fleet status` reading the cloud's /status)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amcp import __version__
from amcp.link import CloudLinks, secrets_in_dir
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import SessionSpec, connect_once
from amcp.wire import topics
from amcp.wire.messages import Heartbeat
from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape

INTERVAL = 0.2
MIN_LOST = 1.5
CHECK = 0.2


def fleet(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cybernetic", "fleet", "status", "-c", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def table(stack: Stack) -> dict[str, Any]:
    shown = fleet(stack.cloud_config, "--json")
    assert shown.returncode in (0, 1), shown.stderr
    doc: dict[str, Any] = json.loads(shown.stdout)
    return doc


def wait_state(stack: Stack, state: str, timeout: float) -> tuple[dict[str, Any], float]:
    """The gateway's row once it is in ``state``, and when that was first seen."""
    deadline = time.monotonic() + timeout
    row: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        row = table(stack)["gateways"].get(stack.gateway_id)
        if row is not None and row["state"] == state:
            return row, time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"not {state} within {timeout} s: {row}\n{stack.log('cloud')[-2000:]}")


async def heartbeat_where(
    stack: Stack, wanted: Callable[[Heartbeat], bool], within: float = 15
) -> Heartbeat:
    """The first heartbeat of the gateway on the cloud broker that is ``wanted``."""
    links = CloudLinks(secrets_in_dir(stack.links_dir), None)
    topic = topics.heartbeat(topics.DEFAULT_PREFIX, stack.gateway_id)
    spec = SessionSpec("test-heartbeats", (topic,), qos=0)
    try:
        async with (
            asyncio.timeout(within),
            connect_once(MqttTransport(), stack._cloud_link(), spec) as link,
        ):
            async for message in link.messages():
                beat = links.open(stack.gateway_id, message.payload, message.topic).message
                if isinstance(beat, Heartbeat) and wanted(beat):
                    return beat
    finally:
        links.close()
    raise AssertionError("the heartbeats stopped")


async def test_the_fleet_table_follows_a_gateway_killed_and_restarted(tmp_path: Path) -> None:
    stack = Stack(
        tmp_path / "s",
        gateway={"uplink": {"heartbeat_interval": INTERVAL}},
        cloud={"fleet": {"min_lost_s": MIN_LOST, "check_interval": CHECK}},
    )
    try:
        password = stack.add_device("dev-hb")
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        stack.start_gateway()
        await asyncio.to_thread(stack.wait_gateway_ready)
        row, _ = await asyncio.to_thread(wait_state, stack, "alive", 20)
        assert row["version"] == __version__
        assert row["interval_s"] == INTERVAL
        assert row["uplink"]["connected"] is True
        assert row["links"]["ingest"] is True
        assert abs(row["clock_offset_s"]) < 1.0  # one machine: transit time only

        # the outbox depth travels too: with the cloud stopped, readings stay in the outbox;
        # the heartbeats go on (read here from the cloud broker, opened with the cloud's keys)
        stack.stop_cloud()
        await publish_readings(
            stack.edge.host, stack.edge.device_port, "dev-hb", password, range(1, 21)
        )
        beat = await heartbeat_where(stack, lambda hb: hb.outbox_rows == 20)
        assert beat.outbox_oldest_age_s is not None
        assert beat.version == __version__
        stack.start_cloud()  # a new cloud: its table fills again from the next heartbeat
        await asyncio.to_thread(stack.wait_cloud_ready)
        await asyncio.to_thread(stack.wait_cloud_count, 20, 30)
        row, _ = await asyncio.to_thread(wait_state, stack, "alive", 20)
        await asyncio.sleep(3 * INTERVAL)
        assert table(stack)["gateways"][stack.gateway_id]["outbox"]["rows"] == 0
        shown = await asyncio.to_thread(fleet, stack.cloud_config)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "1 gateways: 1 alive, 0 late, 0 lost" in shown.stdout
        assert stack.gateway_id in shown.stdout

        before = scrape(stack.cloud_metrics)
        assert before["cybernetic_fleet_gateways:state=alive"] == 1
        assert before[f"cybernetic_fleet_last_seen_age_seconds:gateway={stack.gateway_id}"] < 2

        # SIGKILL: no goodbye, the heartbeats just stop
        killed = time.monotonic()
        stack.kill_gateway()
        row, seen = await asyncio.to_thread(wait_state, stack, "lost", 15)
        # the bound: min_lost_s of silence (phi alone would say lost sooner at this cadence),
        # judged every check_interval; the silence began at most one interval before the kill
        assert MIN_LOST <= row["lost_after_s"] <= MIN_LOST + CHECK + 0.5
        assert seen - killed <= MIN_LOST + CHECK + 1.5  # plus the CLI's own start-up, polled
        shown = await asyncio.to_thread(fleet, stack.cloud_config)
        assert shown.returncode == 1  # a gateway is lost
        assert "LOST" in shown.stdout
        assert scrape(stack.cloud_metrics)["cybernetic_fleet_gateways:state=lost"] == 1

        stack.start_gateway()
        row, _ = await asyncio.to_thread(wait_state, stack, "alive", 30)
        assert row["restarts"] == 1
        assert row["heartbeats"] > 1
        after = scrape(stack.cloud_metrics)
        assert after["cybernetic_fleet_state_changes_total:state=lost"] == 1
        assert after["cybernetic_fleet_state_changes_total:state=alive"] == 1
        assert after.get("cybernetic_fleet_refused_heartbeats_total", 0) == 0
        assert "gateway lost" in stack.log("cloud")
        assert "gateway back" in stack.log("cloud")
    finally:
        await asyncio.to_thread(stack.close)
