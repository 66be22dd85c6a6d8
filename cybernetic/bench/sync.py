"""CRDT sync catch-up: a gateway and the cloud reconnect after overwriting keys while offline.

Both sides overwrite ``--keys`` keys ``--overwrites`` times while their sync loops are
stopped (one transaction per round of keys), then the loops start again over a private
Mosquitto and we wait until both stores hold the same rows and nothing is in flight.

- ``catchup_bytes``: every envelope both sides published from reconnect to idle (hellos,
  deltas, acks; signed aMCP envelopes included).
- ``pycrdt_catchup_bytes``: the same overwrites made to two pycrdt ``Map`` documents (one
  transaction per round), synced with the Yjs handshake: both state vectors, then both diffs.
- ``bytes_ratio``: pycrdt / ours. ``one_key_delta_bytes``: one changed row as it travels
  (msgpack, without the delta frame or envelope; both are reported beside it).
- ``converge_ms``: from starting the sync loops to both stores being equal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from pycrdt import Doc, Map

from amcp.link import CloudLinks, GatewayLink
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.sync import CloudSync, GatewaySync, SyncSettings
from amcp.sync.frames import STREAM, Delta, encode_frame
from amcp.wire import SyncFrame, topics
from cybernetic.bench import progress
from cybernetic.mosquitto import MosquittoBroker

DESCRIPTION = "CRDT sync: catch-up bytes and time after offline overwrites, pycrdt reference"
GATEWAY = "gw-bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--overwrites", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)


def _value(i: int) -> bytes:
    return msgspec.msgpack.encode(i)


def pycrdt_catchup(keys: int, overwrites: int) -> int:
    gw: Doc[Map[int]] = Doc()
    cloud: Doc[Map[int]] = Doc()
    gw_map, cloud_map = gw.get("state", type=Map), cloud.get("state", type=Map)
    for r in range(overwrites):
        with gw.transaction():
            for k in range(keys):
                gw_map[f"reported/k{k:03d}"] = r
        with cloud.transaction():
            for k in range(keys):
                cloud_map[f"desired/k{k:03d}"] = r
    gw_state, cloud_state = gw.get_state(), cloud.get_state()
    to_cloud, to_gw = gw.get_update(cloud_state), cloud.get_update(gw_state)
    cloud.apply_update(to_cloud)
    gw.apply_update(to_gw)
    if gw_map.to_py() != cloud_map.to_py():
        raise RuntimeError("pycrdt reference did not converge")
    return len(gw_state) + len(cloud_state) + len(to_cloud) + len(to_gw)


class _Pair:
    def __init__(self, root: Path, broker: MosquittoBroker, passwords: dict[str, str]) -> None:
        self.root = root
        self.secret = os.urandom(32)
        self.settings = SyncSettings(topic_prefix=f"bench-{root.name}", live_delay=0.01)
        self.logins = {
            user: BrokerLink(host=broker.host, port=broker.port, username=user, password=pw)
            for user, pw in passwords.items()
        }
        self.gw_link = GatewayLink(GATEWAY, self.secret, None)
        self.cloud_links = CloudLinks(lambda g: self.secret if g == GATEWAY else None, None)
        self.gw = Store(root / "gw.db", site=GATEWAY)
        self.cloud = Store(root / "cloud.db", site="cloud")
        self.tasks: list[asyncio.Task[None]] = []
        self.syncs: tuple[GatewaySync, CloudSync] | None = None

    async def start(self) -> tuple[GatewaySync, CloudSync]:
        gw = GatewaySync(
            self.settings, self.gw, self.gw_link, self.logins["gateway"], gateway=GATEWAY
        )
        cloud = CloudSync(self.settings, self.cloud, self.cloud_links, self.logins["cloud"])
        self.tasks = [
            asyncio.create_task(cloud.run(ChildContext("cloud"))),
            asyncio.create_task(gw.run(ChildContext("gw"))),
        ]
        self.syncs = (gw, cloud)
        return gw, cloud

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []

    async def equal(self) -> bool:
        return await self.gw.canonical_dump() == await self.cloud.canonical_dump()

    async def settled(self) -> bool:
        """Both stores equal and no delta in flight on either side."""
        assert self.syncs is not None
        engines = [s.engine for s in self.syncs]
        if any(not e.sessions or any(x.inflight for x in e.sessions.values()) for e in engines):
            return False
        return await self.equal()


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    while True:
        if await condition():
            return
        await asyncio.sleep(0.002)


async def _run_once(
    root: Path, broker: MosquittoBroker, pw: dict[str, str], a: argparse.Namespace
) -> dict[str, float]:
    pair = _Pair(root, broker, pw)
    await pair.gw.open()
    await pair.cloud.open()
    try:
        await pair.start()  # meet once, so both know each other (watermarks exist)
        await _until(pair.settled)
        await pair.stop()
        for r in range(a.overwrites):
            value = _value(r)
            await pair.gw.write(("twin.reported", f"k{k:03d}", value) for k in range(a.keys))
            await pair.cloud.write(("twin.desired", f"k{k:03d}", value) for k in range(a.keys))
        start = time.perf_counter()
        gw, cloud = await pair.start()
        await _until(pair.equal)
        converge_ms = (time.perf_counter() - start) * 1000
        await _until(pair.settled)
        wire = gw.engine.stats.bytes_sent + cloud.engine.stats.bytes_sent
        one = await _one_key(pair)
        await pair.stop()
        return {"catchup_bytes": wire, "converge_ms": converge_ms, **one}
    finally:
        await pair.stop()
        await pair.gw.close()
        await pair.cloud.close()
        pair.gw_link.close()
        pair.cloud_links.close()


async def _one_key(pair: _Pair) -> dict[str, float]:
    """One changed key: the row, the delta frame around it, the envelope around that."""
    before = await pair.cloud.version()
    await pair.cloud.put("twin.desired", "k000", _value(123456))
    changes = await pair.cloud.changes_since(before)
    (row,) = changes.rows
    frame = encode_frame(
        Delta(pair.cloud.database_id, before, changes.version, msgspec.msgpack.encode(changes))
    )
    topic = topics.sync_down(pair.settings.topic_prefix, GATEWAY)
    sealed = pair.cloud_links.seal(GATEWAY, SyncFrame(stream=STREAM, data=frame), topic)
    return {
        "one_key_delta_bytes": len(msgspec.msgpack.encode(row)),
        "one_key_frame_bytes": len(frame),
        "one_key_envelope_bytes": len(sealed),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    progress(f"pycrdt reference: {args.keys} keys x {args.overwrites} overwrites per side")
    reference = pycrdt_catchup(args.keys, args.overwrites)
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        passwords = {"gateway": os.urandom(8).hex(), "cloud": os.urandom(8).hex()}
        broker = MosquittoBroker(Path(tmp) / "broker")
        for user, password in passwords.items():
            broker.add_user(user, password)
        broker.start()
        try:
            for i in range(args.runs):
                root = Path(tmp) / f"run{i}"
                root.mkdir()
                results.append(asyncio.run(_run_once(root, broker, passwords, args)))
                progress(f"run {i + 1}/{args.runs}: {results[-1]}")
        finally:
            broker.stop()

    def median(name: str) -> float:
        return statistics.median(r[name] for r in results)

    ours = median("catchup_bytes")
    return {
        "keys": args.keys,
        "overwrites": args.overwrites,
        "runs": args.runs,
        "catchup_bytes": int(ours),
        "pycrdt_catchup_bytes": reference,
        "bytes_ratio": round(reference / ours, 1),
        "one_key_delta_bytes": int(median("one_key_delta_bytes")),
        "one_key_frame_bytes": int(median("one_key_frame_bytes")),
        "one_key_envelope_bytes": int(median("one_key_envelope_bytes")),
        "converge_ms": round(median("converge_ms"), 1),
    }
