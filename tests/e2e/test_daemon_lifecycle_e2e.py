"""What an operator reads in the daemons' logs: a start-up line (version, node id, config), a
shutdown line (reason, uptime, exit code), and an outage of the cloud broker as two lines per
MQTT session, one when it starts and one when it ends, however many retries lie between."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from amcp import __version__
from cybernetic.stack import Stack


def _records(stack: Stack, kind: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stack.log(kind).splitlines() if line.startswith("{")]


async def test_start_up_shutdown_and_an_outage_in_few_lines(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "s")
    try:
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        stack.start_gateway()
        await asyncio.to_thread(stack.wait_gateway_ready)
        stack.cloud_broker.stop()
        await asyncio.sleep(4)  # several reconnect attempts of each cloud-side session
        stack.cloud_broker.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            again = [r for r in _records(stack, "gateway") if r["msg"].endswith("connected again")]
            if {r["session"] for r in again} >= {"uplink", "sync", "s1"}:
                break
            await asyncio.sleep(0.2)
        assert stack.stop_gateway() == 0
        assert stack.stop_cloud() == 0
    finally:
        await asyncio.to_thread(stack.close)

    for kind, node in (("gateway", stack.gateway_id), ("cloud", "cloud")):
        records = _records(stack, kind)
        first, last = records[0], records[-1]
        assert (first["event"], first["version"], first["node_id"]) == (
            "startup",
            __version__,
            node,
        ), first
        assert first["config"].endswith(".toml")
        assert (last["event"], last["exit_code"], last["reason"]) == (
            "shutdown",
            0,
            "stop requested",
        ), last
        assert last["uptime_s"] > 0

    gateway = _records(stack, "gateway")
    lost = Counter(r["session"] for r in gateway if "retrying until it is back" in r["msg"])
    back = Counter(r["session"] for r in gateway if r["msg"] == "mqtt session connected again")
    for session in ("uplink", "sync", "s1"):  # the sessions on the cloud broker
        assert lost[session] == 1, (session, lost)
        assert back[session] == 1, (session, back)
    assert "ingest" not in lost  # the local broker never went away
