"""The gateway's /readyz against a live ingest: not ready until ingest is subscribed on the
local broker, ready while it is, not ready again when the broker goes away; /healthz stays 200
throughout (the event loop answers). Real ingest and outbox, the in-memory broker, real HTTP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from amcp.runtime.membroker import MemoryBroker
from amcp.runtime.metrics import MetricsServer
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from gateway.config import IngestSettings, OutboxSettings
from gateway.ingest import Ingest
from gateway.metrics import GatewayMetrics, gateway_readiness
from gateway.outbox import Outbox

WAIT_S = 5.0


async def _until(client: httpx.AsyncClient, path: str, status: int) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:
        r = await client.get(path)
        if r.status_code == status or time.monotonic() > deadline:
            assert r.status_code == status, r.text
            return r.json()
        await asyncio.sleep(0.05)


async def test_readyz_follows_the_live_ingest_subscription(tmp_path: Path) -> None:
    broker = MemoryBroker()
    metrics = GatewayMetrics()
    outbox = Outbox(tmp_path / "outbox.sqlite3", OutboxSettings())
    await outbox.open()
    ingest = Ingest(
        IngestSettings(),
        outbox,
        metrics,
        broker=BrokerLink(reconnect_initial=0.05, reconnect_max=0.1),
        client_id="gw-live-ingest",
        transport=broker.transport,
    )
    server = MetricsServer(
        metrics.registry,
        "127.0.0.1:0",
        ready=gateway_readiness(outbox.snapshot, lambda: ingest.connected),
    )
    server.start()
    task: asyncio.Task[None] | None = None
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", timeout=5
        ) as client:
            body = await _until(client, "/readyz", 503)
            assert body["failing"] == {"ingest": "not subscribed on the local broker"}
            assert (await client.get("/healthz")).status_code == 200

            task = asyncio.create_task(ingest.run(ChildContext("ingest")))
            body = await _until(client, "/readyz", 200)
            assert body["checks"]["ingest"] == "subscribed on the local broker"

            broker.kill()
            body = await _until(client, "/readyz", 503)
            assert "ingest" in body["failing"]
            assert (await client.get("/healthz")).status_code == 200

            broker.start()
            await _until(client, "/readyz", 200)
            text = (await client.get("/metrics")).text
            assert 'cybernetic_build_info{component="gateway"' in text
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        server.close()
        await outbox.close()
