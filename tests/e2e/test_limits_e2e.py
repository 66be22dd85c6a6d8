"""A limit authored in the cloud takes effect on the gateway: the real daemons and brokers,
`cybernetic fleet` through the running cloud's control socket, sync down, the gateway's
limits rows applied to its rate gate (docs/s2.md, "Limits from the cloud")."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cybernetic.devices import publish_readings
from cybernetic.stack import Stack


def fleet(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cybernetic", "fleet", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sample(port: int, name: str, **labels: str) -> float:
    """One sample of the gateway's metrics with exactly these labels (0 when absent)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def refused_flood(port: int) -> float:
    return sample(port, "cybernetic_s2_rate_decisions_total", scope="device", result="refused")


def stored(stack: Stack, device: str) -> int:
    if not stack.cloud_db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(stack.cloud_db, timeout=10)) as db:
        try:
            row = db.execute("SELECT count(*) FROM readings WHERE device = ?", (device,)).fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0])


async def wait_for(check: object, what: str, within_s: float = 30.0) -> float:
    """Seconds until ``check()`` (a blocking callable) is true; fails the test after
    ``within_s``."""
    assert callable(check)
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        if await asyncio.to_thread(check):
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within_s} s: {what}")


async def test_a_limit_set_in_the_cloud_tightens_a_device_on_the_gateway(tmp_path: Path) -> None:
    with Stack(tmp_path / "s") as stack:
        flood = stack.add_device("flood")
        calm = stack.add_device("calm")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        host, port, gw = stack.edge.host, stack.device_port, stack.gateway_metrics

        # before: the configured limits (generous) let a fast burst through whole
        await publish_readings(host, port, "flood", flood, range(1, 101))
        await wait_for(lambda: stored(stack, "flood") == 100, "the first 100 readings stored")
        assert (
            sample(gw, "cybernetic_s2_rate_decisions_total", scope="device", result="refused") == 0
        )

        # a bad limit is refused at authoring, with its field named: one line, exit 2
        bad = await asyncio.to_thread(
            fleet, stack.cloud_config, "limit", "set", "gw/gw-1", "device/flood", "--rate", "-5"
        )
        assert bad.returncode == 2, bad
        assert "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        assert "rate" in bad.stderr
        assert "nothing written" in bad.stderr

        # the limit, for this one gateway, written through the running cloud
        start = time.monotonic()
        done = await asyncio.to_thread(
            fleet,
            stack.cloud_config,
            "limit",
            "set",
            f"gw/{stack.gateway_id}",
            "device/flood",
            "--rate",
            "5",
            "--burst",
            "5",
            "--wait",
            "20",
        )
        assert done.returncode == 0, (done.stdout, done.stderr, stack.log("cloud")[-2000:])
        assert "applied on 1 of 1" in done.stdout, done.stdout
        # the gateway took it in its rate gate within seconds
        await wait_for(
            lambda: sample(gw, "cybernetic_s2_limit_rows_in_force", scope="device") == 1,
            "the gateway applying the limits row",
            within_s=10,
        )
        took = time.monotonic() - start
        assert took < 10, took
        assert sample(gw, "cybernetic_s2_limit_rows_total", outcome="applied") == 1

        # above the new rate: the gateway refuses the excess; another device is untouched
        await asyncio.gather(
            publish_readings(host, port, "flood", flood, range(101, 301)),
            publish_readings(host, port, "calm", calm, range(1, 101)),
        )
        await wait_for(lambda: stored(stack, "calm") == 100, "the calm device's readings stored")
        await wait_for(
            lambda: stored(stack, "flood") - 100 + refused_flood(gw) == 200,
            "every flood reading stored or refused",
        )
        refused = refused_flood(gw)
        assert refused >= 150, refused
        let_through = stored(stack, "flood") - 100
        assert 5 <= let_through <= 50, let_through
        assert let_through + refused == 200

        # the applied marks: the cloud saw the gateway acknowledge the row
        shown = await asyncio.to_thread(
            fleet, stack.cloud_config, "applied", "limits", f"gw/{stack.gateway_id}/device/flood"
        )
        assert shown.returncode == 0, shown.stderr
        assert "applied on 1 of 1" in shown.stdout
        marks = await asyncio.to_thread(fleet, stack.cloud_config, "marks")
        assert stack.gateway_id in marks.stdout

        # removed in the cloud: the configured limit applies again
        gone = await asyncio.to_thread(
            fleet,
            stack.cloud_config,
            "limit",
            "remove",
            f"gw/{stack.gateway_id}",
            "device/flood",
            "--wait",
            "20",
        )
        assert gone.returncode == 0, gone.stderr
        await wait_for(
            lambda: sample(gw, "cybernetic_s2_limit_rows_in_force", scope="device") == 0,
            "the gateway restoring the configured limit",
            within_s=10,
        )
        before = stored(stack, "flood")
        await publish_readings(host, port, "flood", flood, range(301, 401))
        await wait_for(lambda: stored(stack, "flood") == before + 100, "all 100 stored again")
