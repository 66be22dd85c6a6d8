"""Issue 18: the gateway's workers restart one for one under the durable resources.

A twins crash used to restart everything started after it (rest_for_one over the whole
gateway): the uplink, sync, ingest and S1 with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from amcp.runtime.config import load
from amcp.runtime.supervisor import ChildContext, ChildInfo, ChildSpec
from cybernetic.stack import Stack
from gateway.app import Gateway
from gateway.config import GatewayConfig


def _find(tree: list[ChildInfo], name: str) -> ChildInfo:
    for info in tree:
        if info.name == name:
            return info
        with contextlib.suppress(KeyError):
            return _find(info.children, name)
    raise KeyError(name)


async def test_a_worker_crash_restarts_that_worker_alone(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack")
    try:
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        gw = Gateway(load(stack.gateway_config, GatewayConfig))
        crashed = asyncio.Event()

        async def crashing_twins(ctx: ChildContext) -> None:
            ctx.ready()
            if not crashed.is_set():
                crashed.set()
                await asyncio.sleep(0.5)
                raise RuntimeError("twins bug")
            await asyncio.Event().wait()

        # a twins child with a bug in it, in the twins child's place in the workers' tree
        place = [s.name for s in gw.workers._specs].index("twins")
        gw.workers._specs[place] = ChildSpec(
            "twins", crashing_twins, wait_ready=True, shutdown_timeout=5
        )
        task = asyncio.create_task(gw.supervisor.run(ChildContext("gateway")))
        try:
            async with asyncio.timeout(30):
                await crashed.wait()
                while _find(gw.supervisor.tree(), "twins").restarts < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                while not (gw.ingest.connected and gw.uplink.connected):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            tree = gw.supervisor.tree()
            assert _find(tree, "twins").restarts == 1
            for name in ("outbox", "state", "events", "uplink", "ingest", "rules", "s2"):
                assert _find(tree, name).restarts == 0, (name, tree)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            gw.link.close()
    finally:
        await asyncio.to_thread(stack.close)
