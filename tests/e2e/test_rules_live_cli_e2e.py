"""Changing the rules of a running gateway from the command line (issue 17): `cybernetic
patterns add|remove -c gateway.toml` against the real `cybernetic gateway run` daemon goes
through its control socket, takes effect at once, and never needs a restart."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

from cybernetic.stack import Stack
from gateway.control import SOCKET_NAME
from tests.e2e.test_rules_e2e import ALERT_DELAY_S, _events, _publish, _wait_events


def patterns(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cybernetic", "patterns", *args, "-c", str(stack.gateway_config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_rules_added_and_removed_on_a_running_gateway(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "s")
    try:
        password = stack.add_device("sensor-01")
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        stack.start_gateway()
        await asyncio.to_thread(stack.wait_gateway_ready)
        sock = stack.state / "gateway" / SOCKET_NAME
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # the service user's alone
        pid = stack.gateway_proc.pid if stack.gateway_proc else None

        added = await asyncio.to_thread(
            patterns, stack, "add", "humid", "--when", "humidity > 55 => alert"
        )
        assert added.returncode == 0, added.stderr
        assert "the running gateway applied it" in added.stdout
        await _publish(stack, "sensor-01", password, [56.0, 40.0], start=1)
        fired = await _wait_events(stack, "rules.humid", 1, ALERT_DELAY_S)
        assert [attrs["values"] for _, _, attrs in fired] == [{"humidity": 56.0}]

        # a rule that does not compile is refused before anything reaches the gateway
        broken = await asyncio.to_thread(patterns, stack, "add", "bad", "--when", "humidity >")
        assert broken.returncode == 2
        assert "Traceback" not in broken.stderr

        removed = await asyncio.to_thread(patterns, stack, "remove", "humid")
        assert removed.returncode == 0, removed.stderr
        listed = await asyncio.to_thread(patterns, stack, "list")
        assert "humid" not in listed.stdout
        await _publish(stack, "sensor-01", password, [70.0], start=3)
        await asyncio.to_thread(stack.wait_cloud_count, 3, 30)
        await asyncio.sleep(1.0)  # time for an alert that should not come
        assert len(_events(stack, "rules.humid")) == 1
        assert stack.gateway_proc is not None
        assert stack.gateway_proc.pid == pid  # the same process throughout: no restart
        assert stack.gateway_proc.poll() is None
    finally:
        await asyncio.to_thread(stack.close)
