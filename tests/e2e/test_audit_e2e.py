"""Audit end to end through the running daemons: a limit set from the cloud and a reload on the
gateway become entries of the gateway's chain, reach the cloud's Merkle log under a signed
tree head, and `cybernetic audit verify` and `audit show` report them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cybernetic.stack import Stack


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cybernetic", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


async def test_gateway_actions_reach_the_cloud_log_and_verify(tmp_path: Path) -> None:
    with Stack(tmp_path / "s") as stack:
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        config = str(stack.cloud_config)
        done = await asyncio.to_thread(
            cli, "fleet", "limit", "set", f"gw/{stack.gateway_id}", "device/flood",
            "--rate", "5", "--burst", "5", "--wait", "20", "-c", config,
        )  # fmt: skip
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert stack.gateway_proc is not None
        os.kill(stack.gateway_proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 40
        shown = ""
        while time.monotonic() < deadline:
            shown = (await asyncio.to_thread(cli, "audit", "show", "-c", config)).stdout
            if "config.reloaded" in shown and "s2.limits" in shown:
                break
            await asyncio.sleep(0.5)
        assert "config.reloaded" in shown, (shown, stack.log("gateway")[-2000:])
        assert f"{stack.gateway_id}#" in shown
        assert "s2.limits" in shown
        checked = await asyncio.to_thread(cli, "audit", "verify", "-c", config)
        assert checked.returncode == 0, checked.stdout
        assert "audit log sound" in checked.stdout
        assert "signed tree head" in checked.stdout
        only = await asyncio.to_thread(
            cli, "audit", "show", "--kind", "config.reloaded", "-c", config
        )
        assert "s2.limits" not in only.stdout
        assert "config.reloaded" in only.stdout
