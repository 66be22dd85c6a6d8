"""A policy file enforced by a running gateway on live telemetry (real brokers, real cloud).

The gateway runs in this process so the test can look at its policy stage's counts; brokers
and the cloud daemon are real processes. Flagged readings are stored and reach the cloud as
``policy.flagged`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path

import msgspec

from amcp.runtime.config import load
from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape
from gateway.app import Gateway
from gateway.config import GatewayConfig
from tests.stopping import stop
from wasm import PolicyConfig

POLICY = """policy "live-test" version 1
rule too_hot when temp >= 28 then deny because "temperature at or above 28"
rule warm when temp >= 27 then flag because "warm"
rule as_fraction when load >= 90 then transform load = load / 100 because "load as a fraction"
"""


def _wait_cloud_serving(stack: Stack, timeout: float = 30.0) -> None:
    """Until the cloud serves metrics (subscribed): a batch sent earlier waits for a resend."""
    deadline = time.monotonic() + timeout
    while not scrape(stack.cloud_metrics, 0.5):
        if time.monotonic() > deadline:
            raise TimeoutError(stack.log("cloud")[-2000:])
        time.sleep(0.1)


def _flag_events(stack: Stack, n: int, timeout: float = 60.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(stack.cloud_db, timeout=10)) as db:
            rows = db.execute(
                "SELECT source, attrs FROM events WHERE name = 'policy.flagged'"
            ).fetchall()
        if len(rows) >= n or time.monotonic() > deadline:
            assert {source for source, _ in rows} <= {"dev-p"}
            return [json.loads(attrs) for _, attrs in rows]
        time.sleep(0.2)


async def test_policy_enforced_on_live_telemetry(tmp_path: Path) -> None:
    (tmp_path / "live.policy").write_text(POLICY)
    stack = Stack(tmp_path / "stack")
    try:
        password = stack.add_device("dev-p")
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(_wait_cloud_serving, stack)
        config = load(stack.gateway_config, GatewayConfig)
        policy = PolicyConfig(file=str(tmp_path / "live.policy"))
        gw = Gateway(msgspec.structs.replace(config, policy=policy))
        stage = gw.policy
        assert stage is not None
        gateway = asyncio.create_task(gw.serve())
        # in-process the metrics server answers before ingest subscribes: ask the parts
        async with asyncio.timeout(60):
            while not (gw.ingest.connected and gw.uplink.connected):  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.05)
        # publish_readings sends temp = 20 + seq % 10 and load = seq % 100
        await publish_readings(
            stack.edge.host, stack.edge.device_port, "dev-p", password, range(1, 101)
        )
        kept = [s for s in range(1, 101) if 20 + s % 10 < 28]
        assert await asyncio.to_thread(stack.wait_cloud_count, len(kept), 90) == len(kept)
        with contextlib.closing(sqlite3.connect(stack.cloud_db)) as db:
            rows = dict(db.execute('SELECT seq, "values" FROM readings').fetchall())
        assert sorted(rows) == kept
        loads = {seq: json.loads(v)["load"] for seq, v in rows.items()}
        assert loads[95] == 0.95  # transformed by the policy before the outbox
        assert loads[45] == 45  # untouched
        assert stage.counts.denied == 100 - len(kept)
        flagged = [s for s in kept if 20 + s % 10 == 27]  # the first rule that matches wins
        assert stage.counts.transformed == sum(
            1 for s in kept if s % 100 >= 90 and s not in flagged
        )
        assert stage.counts.flagged == len(flagged)
        events = await asyncio.to_thread(_flag_events, stack, len(flagged))
        assert sorted(a["seq"] for a in events) == flagged
        assert {(a["rule"], a["reason"], a["policy"]) for a in events} == {
            ("warm", "warm", "live-test")
        }
        await stop(gateway)
    finally:
        stack.close()
