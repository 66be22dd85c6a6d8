"""Algedonic priority with the real daemons and brokers (issue 20): a pain signal raised by
a rule while 50,000 readings wait in the gateway's outbox (the cloud broker down) reaches the
cloud's store before the backlog does, when the link returns."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape
from tests.e2e.test_rules_e2e import _events

BACKLOG = 50_000
RULES = {
    "patterns": {
        "smoke": {"when": "smoke > 0", "actions": [{"type": "algedonic", "reason": "smoke"}]}
    }
}


async def test_an_algedonic_signal_reaches_the_cloud_before_the_backlog(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "s", gateway={"rules": RULES})
    try:
        pw = {d: stack.add_device(d) for d in ("dev-1", "alarm")}
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        stack.cloud_broker.stop()  # an outage: the backlog builds up in the outbox
        await publish_readings(
            stack.edge.host,
            stack.device_port,
            "dev-1",
            pw["dev-1"],
            range(1, BACKLOG + 1),
            window=500,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # every reading committed to the outbox
            rows = (await asyncio.to_thread(scrape, stack.gateway_metrics)).get(
                "cybernetic_outbox_rows", 0
            )
            if rows >= BACKLOG:
                break
            await asyncio.sleep(0.2)
        await _smoke(stack, pw["alarm"])
        await asyncio.sleep(1.0)  # the rule fires; the signal waits on the urgent lane
        stack.cloud_broker.start()
        seen_at = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _events(stack, "algedonic"):
                seen_at = stack.cloud_count()
                break
            await asyncio.sleep(0.05)
        assert seen_at is not None, stack.log("gateway")[-3000:]
        assert seen_at < BACKLOG // 5, seen_at  # well ahead of the backlog
        assert await asyncio.to_thread(stack.wait_cloud_count, BACKLOG + 1, 180) == BACKLOG + 1
        (source, severity, attrs), *more = _events(stack, "algedonic")
        assert (source, severity, attrs["reason"], more) == ("alarm", "critical", "smoke", [])
    finally:
        await asyncio.to_thread(stack.close)


async def _smoke(stack: Stack, password: str) -> None:
    from amcp.runtime.mqtt import MqttTransport  # noqa: PLC0415 - one device's one message
    from amcp.runtime.session import SessionSpec, connect_once  # noqa: PLC0415
    from amcp.runtime.settings import BrokerLink  # noqa: PLC0415

    login = BrokerLink(port=stack.device_port, username="alarm", password=password)
    body = json.dumps({"seq": 1, "boot": "b1", "values": {"smoke": 1}}).encode()
    async with connect_once(MqttTransport(), login, SessionSpec("alarm")) as link:
        await link.publish("devices/alarm/telemetry", body, qos=1)
