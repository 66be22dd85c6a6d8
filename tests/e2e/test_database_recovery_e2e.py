"""Issue 18: a store that fails under the running daemon is reopened by its supervisor.

The outbox's files are made immutable (``chattr +i``: even root's writes then fail, on open
descriptors too) under the running gateway: its writes fail (not a full disk, which only
pauses ingest), the
outbox child fails, the supervisor reopens the same Outbox object and restarts what depends
on it, ingest resumes, and nothing is lost: what was committed stays, what was not is
redelivered by the broker. The same for the cloud's reading store. Each test checks in the log
that the supervisor restarted the store's child and did not give up (escalate).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape
from tests.e2e.test_hardening_e2e import _alive
from tests.needs import needs_root


def _wait_for_log(stack: Stack, text: str, timeout: float, kind: str = "gateway") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and text not in stack.log(kind):
        time.sleep(0.1)


def _restarts(log: str, child: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if '"child restarted"' in line and f'"child": "{child}"' in line
    ]


def _wait_restarted(stack: Stack, child: str, kind: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _restarts(stack.log(kind), child):
        time.sleep(0.1)


def _restarted_without_escalating(log: str, child: str) -> None:
    assert '"child failed"' in log, log[-3000:]
    assert f'"child": "{child}"' in log, log[-3000:]
    assert _restarts(log, child), log[-3000:]
    assert "restarted too often" not in log, log[-3000:]
    assert "supervision tree failed" not in log, log[-3000:]


def _wait_metric(stack: Stack, name: str, value: float, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = scrape(stack.gateway_metrics).get(name)
        if got == value:
            break
        time.sleep(0.2)
    return got


def _immutable(files: list[Path], on: bool) -> None:
    flag = "+i" if on else "-i"
    subprocess.run(["chattr", flag, *map(str, files)], check=True)


async def test_outbox_database_failing_under_the_gateway_is_reopened_and_nothing_lost(
    tmp_path: Path,
) -> None:
    needs_root("chattr +i")
    stack = Stack(tmp_path / "stack")
    try:
        password = stack.add_device("dev-r")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        await publish_readings(stack.edge.host, stack.device_port, "dev-r", password, range(1, 201))
        assert await asyncio.to_thread(stack.wait_cloud_count, 200, 30) == 200
        # committed and not yet forwarded when the file fails: the cloud is away meanwhile
        stack.kill_cloud()
        await publish_readings(
            stack.edge.host, stack.device_port, "dev-r", password, range(201, 301)
        )
        waiting = await asyncio.to_thread(_wait_metric, stack, "cybernetic_outbox_rows", 100, 20)
        assert waiting == 100, stack.log("gateway")[-3000:]
        # the database and its WAL; not the -shm index, which SQLite maps into memory (a
        # write there would be a SIGBUS, not an error)
        files = [stack.outbox_db, stack.outbox_db.with_name("outbox.sqlite3-wal")]
        _immutable(files, on=True)
        try:
            await publish_readings(
                stack.edge.host, stack.device_port, "dev-r", password, range(301, 401)
            )
            await asyncio.to_thread(_wait_for_log, stack, '"child": "outbox"', 15)
        finally:
            _immutable(files, on=False)
        await asyncio.to_thread(_wait_restarted, stack, "outbox", "gateway")
        _restarted_without_escalating(stack.log("gateway"), "outbox")
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        await publish_readings(
            stack.edge.host, stack.device_port, "dev-r", password, range(401, 601)
        )
        assert await asyncio.to_thread(stack.wait_cloud_count, 600, 60) == 600
        assert sorted(k[2] for k in stack.cloud_keys()) == list(range(1, 601))
        _alive(stack)
        m = await asyncio.to_thread(scrape, stack.gateway_metrics)
        assert m["cybernetic_ingest_connected"] == 1
        log = stack.log("gateway")
        assert "cannot schedule new futures" not in log
        _restarted_without_escalating(log, "outbox")
    finally:
        await asyncio.to_thread(stack.close)


async def test_cloud_reading_store_failing_is_reopened_and_nothing_lost(tmp_path: Path) -> None:
    """The same for the cloud: a batch whose commit fails on the database itself is neither
    acknowledged nor nacked (a gateway would dead-letter good readings); the store's child
    fails, the supervisor reopens it, the broker redelivers, and every reading arrives."""
    needs_root("chattr +i")
    stack = Stack(tmp_path / "stack")
    try:
        password = stack.add_device("dev-c")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        await publish_readings(stack.edge.host, stack.device_port, "dev-c", password, range(1, 201))
        assert await asyncio.to_thread(stack.wait_cloud_count, 200, 30) == 200
        files = [stack.cloud_db, stack.cloud_db.with_name("readings.sqlite3-wal")]
        _immutable(files, on=True)
        try:
            await publish_readings(
                stack.edge.host, stack.device_port, "dev-c", password, range(201, 401)
            )
            await asyncio.to_thread(_wait_for_log, stack, '"child": "readings"', 15, "cloud")
        finally:
            _immutable(files, on=False)
        await asyncio.to_thread(_wait_restarted, stack, "readings", "cloud")
        _restarted_without_escalating(stack.log("cloud"), "readings")
        assert await asyncio.to_thread(stack.wait_cloud_count, 400, 60) == 400
        assert sorted(k[2] for k in stack.cloud_keys()) == list(range(1, 401))
        g = await asyncio.to_thread(scrape, stack.gateway_metrics)
        assert g.get("cybernetic_uplink_cloud_refused_rows_total", 0) == 0
        assert stack.cloud_proc is not None
        assert stack.cloud_proc.poll() is None
        log = stack.log("cloud")
        assert "cannot schedule new futures" not in log
        _restarted_without_escalating(log, "readings")
    finally:
        await asyncio.to_thread(stack.close)
