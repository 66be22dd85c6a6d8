"""The sync engine without MQTT: two engines joined by in-memory queues that may lose frames.

The frames still go through their real encoding; only the broker and envelopes are left out,
which is the engine's seam (the MQTT tests run the same engine through the real transport).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from amcp.store import Store
from amcp.sync import Ack, Delta, Role, SyncEngine, SyncSettings
from amcp.sync.frames import Frame, decode_frame, encode_frame
from tests.amcp.sync.sync_support import fingerprint, wait_converged

QUICK = SyncSettings(ack_timeout=0.3, anti_entropy=1.0, live_delay=0.0, batch_bytes=8192)
Drop = Callable[[int, Frame], bool]


class Wire:
    """Runs a gateway engine and a cloud engine joined by queues; ``drop`` loses frames."""

    def __init__(self, gw: SyncEngine, cloud: SyncEngine, drop: Drop | None = None) -> None:
        self.gw, self.cloud = gw, cloud
        self.drop = drop or (lambda _n, _f: False)
        self.sent = 0
        self.dropped = 0

    def _sender(self, queue: asyncio.Queue[Frame]) -> Callable[[str, Frame], object]:
        async def send(_peer: str, frame: Frame) -> None:
            self.sent += 1
            if self.drop(self.sent, frame):
                self.dropped += 1
                return
            queue.put_nowait(decode_frame(encode_frame(frame)))

        return send

    @staticmethod
    async def _deliver(queue: asyncio.Queue[Frame], engine: SyncEngine, peer: str) -> None:
        while True:
            await engine.receive(peer, await queue.get())

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        up: asyncio.Queue[Frame] = asyncio.Queue()
        down: asyncio.Queue[Frame] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self.cloud.serve(self._sender(down))),  # type: ignore[arg-type]
            asyncio.create_task(self.gw.serve(self._sender(up))),  # type: ignore[arg-type]
            asyncio.create_task(self._deliver(up, self.cloud, self.gw.store.site)),
            asyncio.create_task(self._deliver(down, self.gw, "cloud")),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    gw = await Store(tmp_path / "gw.db", site="gw-1").open()
    cloud = await Store(tmp_path / "cloud.db", site="cloud", peer_horizon_ms=1).open()
    yield gw, cloud
    await gw.close()
    await cloud.close()


def engines(gw: Store, cloud: Store) -> tuple[SyncEngine, SyncEngine]:
    return SyncEngine(gw, Role.GATEWAY, QUICK), SyncEngine(cloud, Role.CLOUD, QUICK)


async def fill(gw: Store, cloud: Store, n: int, tag: bytes) -> None:
    await gw.write(("twin.reported", f"d{i % 97}/f{i}", tag) for i in range(n))
    await cloud.write(("twin.desired", f"d{i % 89}/f{i}", tag) for i in range(n))


async def test_sync_engine_converges_when_frames_are_lost(stores: tuple[Store, Store]) -> None:
    gw, cloud = stores
    g, c = engines(gw, cloud)

    def lossy(n: int, frame: Frame) -> bool:
        return (isinstance(frame, Delta) and n % 4 == 0) or (isinstance(frame, Ack) and n % 7 == 0)

    wire = Wire(g, c, lossy)
    await fill(gw, cloud, 3000, b"a")
    async with wire.running():
        await wait_converged(gw, cloud, within=30)
        await fill(gw, cloud, 1500, b"b")
        await gw.write(("twin.reported", f"d{i % 97}/f{i}", None) for i in range(0, 1500, 5))
        await wait_converged(gw, cloud, within=30)
    assert wire.dropped > 0
    assert g.stats.gaps + c.stats.gaps + g.stats.stalls + c.stats.stalls > 0
    assert await fingerprint(cloud) == (6000, 300, (await fingerprint(gw))[2])


async def test_sync_engine_expired_peer_entry_gets_a_full_resync(
    stores: tuple[Store, Store],
) -> None:
    gw, cloud = stores
    g, c = engines(gw, cloud)
    await fill(gw, cloud, 500, b"a")
    async with Wire(g, c).running():
        await wait_converged(gw, cloud)
    first_resyncs, first_sent = c.stats.resyncs, c.stats.rows_sent
    # a first contact is resynced in full too, but only rows the cloud held at the hello
    # go back unfiltered: the gateway's rows merged during the sync are mostly not echoed
    assert first_sent < 1000

    await asyncio.sleep(0.01)
    expired, _ = await cloud.collect_garbage()
    assert expired == ["gw-1"]
    assert await cloud.peer("gw-1") is None

    g2, c2 = engines(gw, cloud)
    async with Wire(g2, c2).running():
        await wait_converged(gw, cloud)
        await gw.put("twin.reported", "new", b"1")
        await wait_converged(gw, cloud)
    assert first_resyncs == 1
    assert c2.stats.resyncs == 1
    # a stranger gets everything, its own rows included
    assert c2.stats.rows_sent >= 1000


async def test_sync_engine_resumes_from_watermarks_without_resending(
    stores: tuple[Store, Store],
) -> None:
    gw, cloud = stores
    g, c = engines(gw, cloud)
    await fill(gw, cloud, 2000, b"a")
    async with Wire(g, c).running():
        await wait_converged(gw, cloud)
    await fill(gw, cloud, 10, b"b")
    g2, c2 = engines(gw, cloud)
    async with Wire(g2, c2).running():
        await wait_converged(gw, cloud)
    # only the 10 new rows each way; a stall (an ack later than 0.3 s on a loaded machine)
    # sends its unacknowledged rows again, never the 2,000 from before
    for engine in (g2, c2):
        assert 10 <= engine.stats.rows_sent <= 10 * (1 + engine.stats.stalls)
    assert (g2.stats.resyncs, c2.stats.resyncs) == (0, 0)
