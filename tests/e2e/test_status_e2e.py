"""`cybernetic status` against the running daemons: what an operator sees, with the real
gateway and cloud processes and brokers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from amcp import __version__
from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape


def status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cybernetic", "status", "-c", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_status_of_a_running_gateway_and_cloud(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "s")
    try:
        password = stack.add_device("dev-s")
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        stack.start_gateway()
        await asyncio.to_thread(stack.wait_gateway_ready)
        await publish_readings(
            stack.edge.host, stack.edge.device_port, "dev-s", password, range(1, 51)
        )
        await asyncio.to_thread(stack.wait_cloud_count, 50, 60)

        shown = await asyncio.to_thread(status, stack.gateway_config)
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert f"gateway {stack.gateway_id}  version {__version__}" in text
        assert "READY" in text
        assert "ingest up" in text
        assert "uplink up" in text
        assert "parts: all running, no restarts" in text
        assert "limits from the cloud: 0 in force" in text

        # every MQTT session of the daemon reports on its registry (through the transport)
        scraped = await asyncio.to_thread(scrape, stack.gateway_metrics)
        for session in ("ingest", "uplink", "sync", "s1", "s1-devices", "heartbeat"):
            assert scraped[f"cybernetic_mqtt_connected:session={session}"] == 1, session

        doc = json.loads((await asyncio.to_thread(status, stack.gateway_config, "--json")).stdout)
        assert doc["component"] == "gateway"
        assert doc["sessions"]["ingest"] is True
        assert doc["checks"]["ingest"]["ok"] is True
        assert doc["outbox"]["storage_full"] is False
        parts = {c["name"] for c in doc["supervisor"]}
        assert parts == {"outbox", "urgent", "audit", "state", "workers"}

        cloud = json.loads((await asyncio.to_thread(status, stack.cloud_config, "--json")).stdout)
        assert cloud["component"] == "cloud"
        assert cloud["ingest"]["stored_readings"] == 50
        assert cloud["ready"] is True
        shown_cloud = await asyncio.to_thread(status, stack.cloud_config)
        assert "fleet: " in shown_cloud.stdout
        assert "storage: sqlite at sqlite:" in shown_cloud.stdout
        assert "audit log: " in shown_cloud.stdout
        assert cloud["storage"]["reachable"] is True

        stack.cloud_broker.stop()  # the cloud link goes: the gateway still takes telemetry
        await asyncio.sleep(1.0)
        shown = await asyncio.to_thread(status, stack.gateway_config)
        assert shown.returncode == 0, shown.stdout
        assert "uplink DOWN" in shown.stdout

        stack.stop_gateway()
        gone = await asyncio.to_thread(status, stack.gateway_config)
        assert gone.returncode == 3
        assert "Traceback" not in gone.stderr
        assert len(gone.stderr.strip().splitlines()) == 1
        assert "is the daemon running?" in gone.stderr
    finally:
        await asyncio.to_thread(stack.close)
