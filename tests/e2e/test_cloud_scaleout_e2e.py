"""Cloud ingest on PostgreSQL, scaled out and under faults: every reading stored exactly once.

- Two ``cloud run`` workers share three gateways' uplinks (``$share/cloud/...``); one is
  SIGKILLed again and again mid-stream.
- The PostgreSQL server is restarted mid-stream: ingest pauses and resumes.
- The primary server dies: the worker fails over to the standby DSN and ingest goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cybernetic.cloud_workers import Fleet, fill, stored, until
from cybernetic.postgres import PostgresCluster
from cybernetic.stack import scrape

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A private server of this test's own: it is restarted and killed."""
    with PostgresCluster() as c:
        yield c


def _expected(gateways: int, n: int) -> set[tuple[str, str, int]]:
    return {(f"dev-{g}", "b1", s) for g in range(gateways) for s in range(1, n + 1)}


async def test_two_workers_share_three_gateways_and_a_killed_worker_loses_nothing(
    tmp_path: Path, pg_dsn: str
) -> None:
    fleet = Fleet(tmp_path / "fleet", pg_dsn)
    fleet.broker.start()
    try:
        for name in ("w1", "w2"):
            fleet.start_worker(name)
        await until(lambda: all(fleet.worker_ready(w) for w in ("w1", "w2")), 60, "workers")
        n = 3000
        async with contextlib.AsyncExitStack() as gateways:
            outboxes = [
                await gateways.enter_async_context(fleet.gateway(f"gw-{g}", tmp_path))
                for g in range(3)
            ]
            for g, outbox in enumerate(outboxes):
                await fill(outbox, f"dev-{g}", range(1, n // 2 + 1))
            for _ in range(3):  # SIGKILL w1 mid-stream, three times
                await asyncio.sleep(0.7)
                fleet.stop_worker("w1", signal.SIGKILL)
                await asyncio.sleep(0.3)
                fleet.start_worker("w1")
            for g, outbox in enumerate(outboxes):
                await fill(outbox, f"dev-{g}", range(n // 2 + 1, n + 1))
            await until(
                lambda: all(o.snapshot().rows == 0 for o in outboxes),
                120,
                f"outboxes drained; w1: {fleet.log('w1')[-1500:]} w2: {fleet.log('w2')[-1500:]}",
            )
        keys = stored(pg_dsn)
        assert len(keys) == len(set(keys)) == 3 * n
        assert set(keys) == _expected(3, n)
        # both workers took a share of the batches
        w2 = scrape(fleet.metrics["w2"]).get("cybernetic_cloud_batches_total", 0)
        assert 0 < w2 < 3 * n / 100
    finally:
        fleet.close()


async def test_a_server_restart_mid_stream_pauses_ingest_and_loses_nothing(
    tmp_path: Path, cluster: PostgresCluster
) -> None:
    fleet = Fleet(tmp_path / "fleet", cluster.dsn)
    fleet.broker.start()
    try:
        fleet.start_worker("w1")
        await until(lambda: fleet.worker_ready("w1"), 60, "worker")
        async with fleet.gateway("gw-0", tmp_path) as outbox:
            await fill(outbox, "dev-0", range(1, 2001))
            await until(lambda: len(stored(cluster.dsn)) > 0, 30, "first readings stored")
            await asyncio.to_thread(cluster.stop, "immediate")  # a crash, mid-stream
            await fill(outbox, "dev-0", range(2001, 3001))
            await asyncio.sleep(2)
            await asyncio.to_thread(cluster.start)
            await until(lambda: outbox.snapshot().rows == 0, 90, fleet.log("w1")[-2000:])
        keys = stored(cluster.dsn)
        assert len(keys) == 3000
        assert set(keys) == _expected(1, 3000)
        log = fleet.log("w1")
        assert "storage unreachable" in log
        assert "storage reachable again" in log
        assert "Traceback" not in log
    finally:
        fleet.close()


async def test_the_standby_dsn_takes_over_when_the_primary_dies(
    tmp_path: Path, cluster: PostgresCluster, pg_dsn: str
) -> None:
    fleet = Fleet(tmp_path / "fleet", cluster.dsn, standby_dsn=pg_dsn)
    fleet.broker.start()
    try:
        fleet.start_worker("w1")
        await until(lambda: fleet.worker_ready("w1"), 60, "worker")
        async with fleet.gateway("gw-0", tmp_path) as outbox:
            await fill(outbox, "dev-0", range(1, 1001))
            await until(lambda: len(stored(cluster.dsn)) == 1000, 60, fleet.log("w1")[-2000:])
            await asyncio.to_thread(cluster.kill)
            await fill(outbox, "dev-0", range(1001, 2001))
            await until(lambda: outbox.snapshot().rows == 0, 90, fleet.log("w1")[-2000:])
        await asyncio.to_thread(cluster.start)  # to read what the primary held
        on_primary, on_standby = set(stored(cluster.dsn)), set(stored(pg_dsn))
        assert on_primary | on_standby == _expected(1, 2000)
        assert len(on_standby) >= 1000
        assert "storage failing over" in fleet.log("w1")
    finally:
        fleet.close()
