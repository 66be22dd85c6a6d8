"""Device twins end to end: what a device reports reaches the cloud's store through CRDT sync."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import msgspec

from cybernetic.devices import publish_readings
from cybernetic.stack import Stack


def _reported(stack: Stack, device: str) -> dict[str, object]:
    path = stack.state / "cloud" / "store.sqlite3"
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        try:
            rows = db.execute(
                "SELECT key, value FROM map WHERE ns = 'twin.reported' AND key LIKE ?",
                (f"{device}/%",),
            ).fetchall()
        except sqlite3.OperationalError:
            return {}
    return {k.split("/", 1)[1]: msgspec.msgpack.decode(v) for k, v in rows if v is not None}


async def test_a_devices_reported_twin_reaches_the_cloud(tmp_path: Path) -> None:
    with Stack(tmp_path / "s", gateway={"gateway": {"twin_interval": 0.3}}) as stack:
        pw = stack.add_device("twin-dev")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        await publish_readings(stack.edge.host, stack.edge.device_port, "twin-dev", pw, range(1, 6))
        deadline = time.monotonic() + 30
        twin: dict[str, object] = {}
        while time.monotonic() < deadline and twin.get("load") != 5:
            await asyncio.sleep(0.3)
            twin = _reported(stack, "twin-dev")
        # the newest reading's values (publish_readings sends temp = 20 + seq % 10, load = seq)
        assert twin.get("load") == 5, twin
        assert twin.get("temp") == 25.0
        assert isinstance(twin.get("last_seen_ms"), int)
