"""Shared pieces of the S1 tests: link keys, broker logins, simulated devices, a running S1."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amcp.link import CloudLinks, GatewayLink
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from cloud.s1 import CloudS1, CloudS1Settings
from cybernetic.mosquitto import MosquittoBroker
from gateway.s1 import S1, CapabilityConfig, DeviceResponder, Done, Partial, Progress, S1Settings
from gateway.s1.responder import Handler, Step
from tests.stopping import stop


def login(broker: MosquittoBroker, user: str) -> BrokerLink:
    return BrokerLink(
        host=broker.host,
        port=broker.port,
        username=user,
        password=broker.password(user),
        reconnect_initial=0.05,
        reconnect_max=0.5,
    )


@dataclass
class Links:
    gateway: GatewayLink
    cloud: CloudLinks


def make_links(gateway: str, secret: bytes | None = None) -> Links:
    secret = secret or os.urandom(32)
    return Links(
        GatewayLink(gateway, secret, None),
        CloudLinks(lambda gw: secret if gw == gateway else None, None),
    )


async def measure(args: dict[str, Any]) -> AsyncIterator[Step]:
    """Streams ``n`` samples with progress, then their sum."""
    n = int(args.get("n", 3))
    for i in range(n):
        yield Progress((i + 1) / n)
        yield Partial({"sample": i})
    yield Done({"sum": sum(range(n))})


@dataclass
class Hang:
    """A handler that starts and never finishes (until cancelled)."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, args: dict[str, Any]) -> AsyncIterator[Step]:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.stopped.set()
        yield Done()


def device(
    broker: MosquittoBroker,
    name: str,
    handlers: Mapping[str, Handler],
    *,
    silent: bool = False,
) -> DeviceResponder:
    password = os.urandom(8).hex()
    broker.add_device(name, password)
    assert broker.device_port is not None
    return DeviceResponder(
        name,
        handlers,
        host=broker.host,
        port=broker.device_port,
        password=password,
        silent=silent,
    )


def caps(device_name: str, **extra: Any) -> list[CapabilityConfig]:
    return [
        CapabilityConfig(
            name="sensor.measure",
            device=device_name,
            action="measure",
            description="stream samples",
            input_schema={
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 1}},
            },
            cost=1.0,
            **extra,
        ),
        CapabilityConfig(name="sensor.hang", device=device_name, action="hang"),
    ]


@contextlib.asynccontextmanager
async def running(*jobs: Awaitable[None]) -> AsyncIterator[None]:
    """Run ``jobs`` as tasks for the body, then cancel them."""
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        yield
    finally:
        await stop(*tasks)


async def wait_for(predicate: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls state outside this loop
            await asyncio.sleep(0.02)


@dataclass
class Deployment:
    s1: S1
    cloud: CloudS1
    links: Links


def make_deployment(
    broker: MosquittoBroker,
    tmp: Path,
    prefix: str,
    gateway: str,
    settings: S1Settings,
    *,
    cloud_settings: CloudS1Settings | None = None,
) -> Deployment:
    """Gateway S1 and cloud S1 on one broker (it plays the local and the cloud broker)."""
    links = make_links(gateway)
    s1 = S1(
        settings,
        tmp / "gateway.sqlite3",
        links.gateway,
        gateway=gateway,
        local_broker=login(broker, "gateway"),
        cloud_broker=login(broker, "gateway"),
        state_dir=tmp,
    )
    cloud = CloudS1(
        cloud_settings or CloudS1Settings(topic_prefix=prefix, client_id=f"cloud-{gateway}"),
        tmp / "cloud.sqlite3",
        links.cloud,
        broker=login(broker, "cloud"),
    )
    return Deployment(s1, cloud, links)


async def run_child(spec_run: Any) -> None:
    await spec_run(ChildContext("test"))
