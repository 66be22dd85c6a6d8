"""GoldRush rules in a running gateway, end to end: real brokers, the real cloud daemon.

A rule written to the gateway's CRDT store (namespace ``patterns``, as sync writes the
cloud's rows) fires on live telemetry and its alert lands in the cloud's ``events`` table;
alerts raised while the cloud broker is down arrive after it returns.

The gateway (its own rules service and store) runs in this process so the test can write rows
to its store and watch its rule manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from amcp.runtime.config import load
from amcp.store import Store
from cybernetic.stack import Stack, scrape
from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.rules import (
    PatternRule,
    RulesService,
    WindowRule,
    encode_rule,
)
from tests.stopping import stop

ALERT_DELAY_S = 10.0
"""The stated bound: a reading that completes a window is an event in the cloud store within
this long (in practice well under a second: ingest batch 10 ms, uplink batch 20 ms)."""


def _events(stack: Stack, name: str) -> list[tuple[str, str, dict[str, object]]]:
    if not stack.cloud_db.exists():
        return []
    with contextlib.closing(sqlite3.connect(stack.cloud_db, timeout=10)) as db:
        try:
            rows = db.execute(
                "SELECT source, severity, attrs FROM events WHERE name = ?", (name,)
            ).fetchall()
        except sqlite3.OperationalError:
            return []
    return [(s, sev, json.loads(a)) for s, sev, a in rows]


async def _wait_events(
    stack: Stack, name: str, n: int, within: float
) -> list[tuple[str, str, dict[str, object]]]:
    deadline = time.monotonic() + within
    found = _events(stack, name)
    while len(found) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        found = _events(stack, name)
    return found


async def _publish(
    stack: Stack, device: str, password: str, humidity: list[float], start: int
) -> None:
    async with aiomqtt.Client(
        stack.edge.host, stack.edge.device_port, username=device, password=password
    ) as c:
        for i, h in enumerate(humidity):
            seq = start + i
            body = {
                "seq": seq,
                "boot": "b1",
                "ts": int(time.time() * 1000),
                "values": {"humidity": h},
            }
            await c.publish(f"devices/{device}/telemetry", json.dumps(body), qos=1)


@dataclass
class Running:
    stack: Stack
    gateway: Gateway
    rules: RulesService
    store: Store
    password: str


@contextlib.asynccontextmanager
async def running_gateway(tmp_path: Path) -> AsyncIterator[Running]:
    stack = Stack(tmp_path / "stack")
    try:
        password = stack.add_device("sensor-01")
        stack.start_brokers()
        stack.start_cloud()
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(scrape, stack.cloud_metrics, 0.5):
            assert time.monotonic() < deadline, stack.log("cloud")[-2000:]
            await asyncio.sleep(0.1)
        config = load(stack.gateway_config, GatewayConfig)
        gw = Gateway(config)
        serve = asyncio.create_task(gw.serve())
        try:
            async with asyncio.timeout(60):
                while not (gw.ingest.connected and gw.uplink.connected):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            yield Running(stack, gw, gw.rules, gw.store, password)
        finally:
            await stop(serve)
    finally:
        await asyncio.to_thread(stack.close)


async def test_a_pattern_from_the_store_fires_and_its_alert_reaches_the_cloud(
    tmp_path: Path,
) -> None:
    async with running_gateway(tmp_path) as run:
        mgr = run.rules.manager
        before = mgr.swaps
        await run.store.put("patterns", "humid", encode_rule(PatternRule(when="humidity > 55")))
        window = WindowRule(pattern="humid", count=3, within_s=10, actions=["alert"])
        await run.store.put("patterns", "humid3", encode_rule(window))
        async with asyncio.timeout(5):  # the store notifies on commit: swapped at once
            while mgr.swaps < before + 1 or "humid3" not in mgr.active.entries:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        await _publish(run.stack, "sensor-01", run.password, [56.0, 40.0, 57.0, 58.0], start=1)
        alerts = await _wait_events(run.stack, "rules.humid3", 1, ALERT_DELAY_S)
        assert len(alerts) == 1, run.stack.log("cloud")[-2000:]
        source, severity, attrs = alerts[0]
        assert (source, severity) == ("sensor-01", "warning")
        assert attrs["reading"]["seq"] == 4  # type: ignore[index]
        assert attrs["values"] == {"humidity": 58.0}
        # the readings themselves went on to the cloud untouched
        assert await asyncio.to_thread(run.stack.wait_cloud_count, 4, 20) == 4
        swapped = await _wait_events(run.stack, "rules.swapped", 1, ALERT_DELAY_S)
        assert swapped

        # a broken row: reported to the cloud, the running set stays and keeps firing
        running = mgr.active
        await run.store.put("patterns", "humid", b'{"type":"pattern","when":"humidity >"}')
        refused = await _wait_events(run.stack, "rules.refused", 1, ALERT_DELAY_S)
        assert refused[0][2]["rule"] == "humid"
        assert mgr.active is running
        await _publish(run.stack, "sensor-01", run.password, [60.0, 60.0, 60.0], start=5)
        assert len(await _wait_events(run.stack, "rules.humid3", 2, ALERT_DELAY_S)) == 2


async def test_alerts_raised_while_the_cloud_is_down_arrive_after_it_returns(
    tmp_path: Path,
) -> None:
    """The cloud broker goes down: the uplink loses its connection, alerts and signals wait
    on the urgent lane, the readings in the outbox, and everything arrives once the broker is
    back."""
    async with running_gateway(tmp_path) as run:
        rule = PatternRule(when="humidity > 90", actions=["alert", "algedonic"])
        await run.store.put("patterns", "soaked", encode_rule(rule))
        async with asyncio.timeout(5):
            while "soaked" not in run.rules.manager.active.entries:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        await asyncio.to_thread(run.stack.cloud_broker.stop)
        await _publish(run.stack, "sensor-01", run.password, [95.0, 20.0, 96.0], start=1)
        runner = run.rules.runner
        async with asyncio.timeout(20):  # alerts and signals are kept, waiting
            while runner.counts["event", "ok"] < 2 or runner.records.qsize():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            gw = run.gateway
            while gw.outbox.stats.rows < 3 or gw.urgent.rows < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # 3 readings; 2 alerts and 2 signals on the lane
        assert _events(run.stack, "rules.soaked") == []

        await asyncio.to_thread(run.stack.cloud_broker.start)
        alerts = await _wait_events(run.stack, "rules.soaked", 2, 60)
        assert sorted(a[2]["reading"]["seq"] for a in alerts) == [1, 3]  # type: ignore[index]
        signals = await _wait_events(run.stack, "algedonic", 2, 10)
        assert {s[1] for s in signals} == {"critical"}
        assert {s[2]["origin"] for s in signals} == {f"rules/{run.stack.gateway_id}/soaked"}
        assert await asyncio.to_thread(run.stack.wait_cloud_count, 3, 30) == 3
