"""Issue 18: SIGHUP reaches the parts of both daemons, without a restart.

The gateway's device allow-list used to be frozen at start (the docs said it applied at
once); the cloud had no reload at all, though its unit sends SIGHUP.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape


def _wait_log(stack: Stack, kind: str, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = stack.log(kind)
        if text in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the {kind} log: {stack.log(kind)[-2000:]}")


async def test_an_edited_allow_list_applies_on_sighup(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack", gateway={"ingest": {"devices": ["dev-a"]}})
    try:
        pw = {d: stack.add_device(d) for d in ("dev-a", "dev-b")}
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        host, port = stack.edge.host, stack.device_port
        await publish_readings(host, port, "dev-a", pw["dev-a"], range(1, 11))
        await publish_readings(host, port, "dev-b", pw["dev-b"], range(1, 11))
        assert await asyncio.to_thread(stack.wait_cloud_count, 10, 30) == 10
        m = await asyncio.to_thread(scrape, stack.gateway_metrics)
        assert m["cybernetic_ingest_rejected_total:reason=unknown_device"] == 10
        stack._gateway_extra = {"ingest": {"devices": ["dev-a", "dev-b"]}}
        stack.write_configs()
        assert stack.gateway_proc is not None
        stack.gateway_proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(_wait_log, stack, "gateway", "configuration reloaded")
        await publish_readings(host, port, "dev-b", pw["dev-b"], range(11, 21))
        assert await asyncio.to_thread(stack.wait_cloud_count, 20, 30) == 20
        assert {k[0] for k in stack.cloud_keys()} == {"dev-a", "dev-b"}
        assert stack.gateway_proc.poll() is None  # the same process: no restart
    finally:
        await asyncio.to_thread(stack.close)


async def test_the_cloud_reloads_its_log_level_on_sighup(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack")
    try:
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        assert "cloud ingest subscribed" in stack.log("cloud")
        # warning level, and a setting that needs a restart (named in the log, not applied)
        stack._cloud_extra = {"log": {"level": "warning"}, "ingest": {"session": "other"}}
        stack.write_configs()
        assert stack.cloud_proc is not None
        stack.cloud_proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(_wait_log, stack, "cloud", '"section": "ingest"')
        mark = len(stack.log("cloud"))
        stack.cloud_broker.restart()  # the reconnect logs a warning and an info line
        await asyncio.to_thread(stack.wait_cloud_ready)
        after = stack.log("cloud")[mark:]
        assert "connection lost" in after
        assert "cloud ingest subscribed" not in after  # info is below the reloaded level
        assert stack.cloud_proc.poll() is None
    finally:
        await asyncio.to_thread(stack.close)


async def test_an_edited_policy_file_named_relative_to_the_config_applies_on_sighup(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path / "stack", gateway={"policy": {"file": "live.policy"}})
    policy = stack.state / "live.policy"  # beside gateway.toml: a relative name means there
    policy.write_text('policy "p" version 1\nrule hot when temp >= 100 then deny because "hot"\n')
    try:
        pw = stack.add_device("dev-p")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        host, port = stack.edge.host, stack.device_port
        await publish_readings(host, port, "dev-p", pw, range(1, 11))
        assert await asyncio.to_thread(stack.wait_cloud_count, 10, 30) == 10
        policy.write_text('policy "p" version 2\nrule all when temp >= 0 then deny because "all"\n')
        assert stack.gateway_proc is not None
        stack.gateway_proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(_wait_log, stack, "gateway", "configuration reloaded")
        await publish_readings(host, port, "dev-p", pw, range(11, 21))
        deadline = time.monotonic() + 15
        denied = 0.0
        while time.monotonic() < deadline and denied < 10:
            m = await asyncio.to_thread(scrape, stack.gateway_metrics)
            denied = m.get("cybernetic_policy_decisions_total:decision=denied", 0.0)
            await asyncio.sleep(0.1)
        assert denied == 10
        assert stack.cloud_count() == 10  # nothing of the second batch went on
        assert '"version": 2' in stack.log("gateway")
        assert stack.gateway_proc.poll() is None
    finally:
        await asyncio.to_thread(stack.close)
