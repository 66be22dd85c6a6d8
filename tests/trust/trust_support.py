"""Fixtures for the trust tests: a fleet CA, the cloud's enrolment service answering on a real
broker, and the gateway's link settings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from amcp.crypto.keystore import KeyStore
from amcp.crypto.pki import FleetCA
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from cloud.enrolment import Enrolment
from cloud.enrolment_store import EnrolmentStore
from cybernetic.mosquitto import MosquittoBroker
from tests.stopping import stop


@dataclass
class Cloud:
    ca: FleetCA
    enrolment: Enrolment
    links_dir: Path
    link: BrokerLink


def make_cloud(root: Path, broker: MosquittoBroker, **kw: object) -> Cloud:
    ca = FleetCA(root / "pki")
    ca.init()
    signer = KeyStore(root / "cloud-keys").generate("cloud")
    store = EnrolmentStore(root / "enrolment.sqlite3")
    links = root / "links"
    enrolment = Enrolment(store, ca, signer, links, **kw)  # type: ignore[arg-type]
    link = BrokerLink(
        host=broker.host, port=broker.port, username="cloud", password=broker.password("cloud")
    )
    return Cloud(ca, enrolment, links, link)


@contextlib.asynccontextmanager
async def serving(cloud: Cloud) -> AsyncIterator[None]:
    ctx = ChildContext("enrolment")
    task = asyncio.create_task(cloud.enrolment.serve(cloud.link, ctx))
    try:
        async with asyncio.timeout(10):
            await ctx.wait_ready()
        yield
    finally:
        await stop(task)
