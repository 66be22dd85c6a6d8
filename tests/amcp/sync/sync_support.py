"""Shared pieces of the sync tests: a gateway and a cloud syncing through a real broker."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

from amcp.link import CloudLinks, GatewayLink
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext, stop_task
from amcp.store import Store
from amcp.sync import CloudSync, GatewaySync, Refusal, SyncSettings
from cybernetic.mosquitto import MosquittoBroker

FAST = SyncSettings(ack_timeout=1.0, anti_entropy=2.0, live_delay=0.01)
SYNCED = "ns NOT LIKE 'sync.%'"


def login(broker: MosquittoBroker, user: str) -> BrokerLink:
    return BrokerLink(
        host=broker.host,
        port=broker.port,
        username=user,
        password=broker.password(user),
        reconnect_initial=0.05,
        reconnect_max=0.3,
    )


@dataclass
class Fleet:
    """One cloud and one gateway with their stores, links and sync loops."""

    broker: MosquittoBroker
    root: Path
    prefix: str
    settings: SyncSettings = FAST
    gateway_id: str = "gw-1"
    secret: bytes = field(default_factory=lambda: os.urandom(32))
    refusals: list[Refusal] = field(default_factory=list)
    gw_store: Store | None = None
    cloud_store: Store | None = None
    gw_sync: GatewaySync | None = None
    cloud_sync: CloudSync | None = None
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settings = SyncSettings(
            **{
                **{f: getattr(self.settings, f) for f in self.settings.__struct_fields__},
                "topic_prefix": self.prefix,
            }
        )
        self.gw_link = GatewayLink(self.gateway_id, self.secret, None)
        self.cloud_links = CloudLinks(
            lambda gw: self.secret if gw == self.gateway_id else None, None
        )

    @property
    def gw(self) -> Store:
        assert self.gw_store is not None
        return self.gw_store

    @property
    def cloud(self) -> Store:
        assert self.cloud_store is not None
        return self.cloud_store

    async def open(self) -> None:
        self.gw_store = await Store(self.root / "gw.db", site=self.gateway_id).open()
        self.cloud_store = await Store(self.root / "cloud.db", site="cloud").open()

    async def start_cloud(self) -> None:
        self.cloud_sync = CloudSync(
            self.settings,
            self.cloud,
            self.cloud_links,
            login(self.broker, "cloud"),
            on_refused=self.refusals.append,
        )
        self._tasks["cloud"] = asyncio.create_task(self.cloud_sync.run(ChildContext("cloud")))

    async def start_gateway(self) -> None:
        self.gw_sync = GatewaySync(
            self.settings,
            self.gw,
            self.gw_link,
            login(self.broker, "gateway"),
            gateway=self.gateway_id,
        )
        self._tasks["gw"] = asyncio.create_task(self.gw_sync.run(ChildContext("gw")))

    async def stop(self, name: str) -> None:
        # generous: after 100k changes the engine may be deep in a merge when cancelled
        assert await stop_task(self._tasks.pop(name), grace=20.0)

    async def close(self) -> None:
        for name in list(self._tasks):
            await self.stop(name)
        for store in (self.gw_store, self.cloud_store):
            if store is not None:
                await store.close()
        self.gw_link.close()
        self.cloud_links.close()


async def fingerprint(store: Store, where: str = SYNCED) -> tuple[int, int, int]:
    """(rows, tombstones, sum of clocks): cheap to poll, equal once the maps agree."""

    def query(s: object) -> tuple[int, int, int]:
        conn = s.connection  # type: ignore[attr-defined]
        row = conn.execute(
            f"SELECT count(*), count(*) - count(value), coalesce(sum(hlc % 1000003), 0) "
            f"FROM map WHERE {where}"
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    return await store.call(query)


async def synced_dump(store: Store) -> list[tuple[object, ...]]:
    def query(s: object) -> list[tuple[object, ...]]:
        conn = s.connection  # type: ignore[attr-defined]
        return list(
            conn.execute(
                f"SELECT ns, key, value, hlc, site FROM map WHERE {SYNCED} ORDER BY ns, key"
            )
        )

    return await store.call(query)


async def wait_converged(a: Store, b: Store, within: float = 45.0) -> None:
    """Wait until both maps hold the same synced rows; fail with both fingerprints."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        fa, fb = await fingerprint(a), await fingerprint(b)
        if fa == fb and await synced_dump(a) == await synced_dump(b):
            return
        if loop.time() > deadline:
            raise AssertionError(f"stores did not converge: {a.site} {fa} vs {b.site} {fb}")
        await asyncio.sleep(0.1)


async def wait_for(predicate: object, within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
