"""S2 in the running gateway: a flooding device is limited, a silent one declared a zombie,
and both show in the gateway's metrics and as events in the cloud store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path

from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape


def _events(stack: Stack) -> list[tuple[str, str, dict[str, object]]]:
    if not stack.cloud_db.exists():
        return []
    with contextlib.closing(sqlite3.connect(stack.cloud_db, timeout=10)) as db:
        try:
            rows = db.execute("SELECT name, source, attrs FROM events").fetchall()
        except sqlite3.OperationalError:
            return []
    return [(n, s, json.loads(a)) for n, s, a in rows]


async def test_flood_is_limited_and_a_silent_device_becomes_a_zombie_event(tmp_path: Path) -> None:
    s2 = {
        "limits": {"device_overrides": {"flood": {"rate": 20.0, "burst": 20}}},
        # learn cadences quickly so the test can watch a device go silent
        "phi": {"first_interval_s": 0.2, "min_intervals": 3, "acceptable_pause_s": 0.5},
    }
    with Stack(tmp_path / "s", gateway={"s2": s2}) as stack:
        flood = stack.add_device("flood")
        calm = stack.add_device("calm")
        quiet = stack.add_device("quiet")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)

        await asyncio.gather(
            publish_readings(
                stack.edge.host, stack.edge.device_port, "flood", flood, range(1, 1001)
            ),
            publish_readings(
                stack.edge.host, stack.edge.device_port, "calm", calm, range(1, 101), rate=50
            ),
            publish_readings(
                stack.edge.host, stack.edge.device_port, "quiet", quiet, range(1, 31), rate=10
            ),
        )
        # quiet now stops talking; calm continues, so the gateway keeps ticking
        deadline = time.monotonic() + 30
        zombie: list[tuple[str, str, dict[str, object]]] = []
        seq = 101
        while time.monotonic() < deadline and not zombie:
            await publish_readings(
                stack.edge.host, stack.edge.device_port, "calm", calm, range(seq, seq + 10), rate=20
            )
            seq += 10
            zombie = [e for e in _events(stack) if e[0] == "s2.zombie" and e[1] == "quiet"]
        assert zombie, _events(stack)
        assert zombie[0][2]["unit_kind"] == "device"

        per_device: dict[str, int] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and per_device.get("calm") != seq - 1:
            await asyncio.sleep(0.2)
            with contextlib.closing(sqlite3.connect(stack.cloud_db)) as db:
                per_device = dict(
                    db.execute("SELECT device, count(*) FROM readings GROUP BY device")
                )
        # the calm device kept its full rate; the flood was held near its burst + rate
        assert per_device["calm"] == seq - 1
        assert per_device["quiet"] == 30
        assert 20 <= per_device["flood"] < 200
        g = scrape(stack.gateway_metrics)
        assert g["cybernetic_s2_zombies_declared_total"] >= 1
        assert g["cybernetic_s2_rate_decisions_total"] > 0
