"""A desired twin value written in the cloud reaches a simulated device, and the reported
twin follows: the real daemons and brokers, `cybernetic fleet desired set` (and the same call
through the cloud's control socket), sync down, the gateway's desired-twin worker sending the
device a ``set`` command through S1 with its lease, the device's telemetry closing the loop
(gateway.desired). Then the device goes offline: a change made meanwhile is reported as not
applied, retried, and lands when the device returns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec

from amcp.runtime.database import connect
from amcp.runtime.session import Link
from amcp.wire import topics
from cloud.control import SOCKET_NAME, DesiredSet, send
from cybernetic.stack import CloudEvent, Stack
from gateway.s1.responder import DeviceResponder, Done, Step

DEVICE = "lamp"
MISMATCH = "twin.desired.mismatch"
APPLIED = "twin.desired.applied"


def fleet(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cybernetic", "fleet", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def reported(store: Path, device: str) -> dict[str, Any]:
    """A device's ``twin.reported`` fields in a store file, read beside its running owner."""
    if not store.exists():
        return {}
    with contextlib.closing(connect(store, readonly=True)) as db:
        try:
            rows = db.execute(
                "SELECT key, value FROM map WHERE ns = 'twin.reported' AND key LIKE ?",
                (f"{device}/%",),
            ).fetchall()
        except sqlite3.OperationalError:  # no map table yet
            return {}
    return {k.split("/", 1)[1]: msgspec.msgpack.decode(v) for k, v in rows if v is not None}


def events(stack: Stack, name: str) -> list[CloudEvent]:
    return [e for e in stack.cloud_events() if e.name == name and e.source == DEVICE]


async def wait_for(check: Callable[[], object], what: str, within_s: float = 30.0) -> float:
    """Seconds until ``check()`` (blocking, run in a thread) is true; fails after ``within_s``."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        if await asyncio.to_thread(check):
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within_s} s: {what}")


class Lamp:
    """A simulated device with state: ``set`` applies its args, then the device publishes its
    new values as telemetry (as it also does every ``every`` seconds), so its reported twin
    follows. One connection for commands and telemetry, as the broker gives a device."""

    def __init__(self, stack: Stack, password: str, every: float = 0.5) -> None:
        self.stack = stack
        self.password = password
        self.every = every
        self.state: dict[str, Any] = {"mode": "off", "level": 0}
        self.applied: list[dict[str, Any]] = []
        self.boot = f"lamp-{int(time.time())}"
        self.seq = 0
        self._link: Link | None = None
        self._task: asyncio.Task[None] | None = None
        self.responder: DeviceResponder | None = None

    async def set(self, args: dict[str, Any]) -> AsyncIterator[Step]:
        self.state.update(args)
        self.applied.append(dict(args))
        await self.publish()
        yield Done(dict(self.state))

    async def publish(self) -> None:
        assert self._link is not None
        self.seq += 1
        payload = {
            "seq": self.seq,
            "boot": self.boot,
            "ts": int(time.time() * 1000),
            "values": self.state,
        }
        await self._link.publish(
            topics.device_telemetry(DEVICE), json.dumps(payload).encode(), qos=1
        )

    async def _telemetry(self, link: Link) -> None:
        self._link = link
        while True:
            await self.publish()
            await asyncio.sleep(self.every)

    async def online(self) -> None:
        """Connect (commands and telemetry) and wait until subscribed to its commands."""
        self.responder = DeviceResponder(
            DEVICE,
            {"set": self.set},
            host=self.stack.edge.host,
            port=self.stack.device_port,
            password=self.password,
        )
        self._task = asyncio.create_task(self.responder.run(also=self._telemetry))
        async with asyncio.timeout(10):
            await self.responder.subscribed.wait()

    async def offline(self) -> None:
        """Disconnect: no telemetry, and commands sent meanwhile reach no one."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self._link = None


async def test_a_desired_value_reaches_the_device_and_lands_after_it_was_offline(
    tmp_path: Path,
) -> None:
    config = {
        "gateway": {"twin_interval": 0.2},  # reported twins written 5 times a second
        "s1": {"command_timeout": 1.0},  # an offline device is noticed within a second
    }
    with Stack(tmp_path / "s", gateway=config) as stack:
        lamp = Lamp(stack, stack.add_device(DEVICE))
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        gateway_store = stack.state / "gateway" / "store.sqlite3"
        cloud_store = stack.state / "cloud" / "store.sqlite3"
        socket = stack.state / "cloud" / SOCKET_NAME
        try:
            await lamp.online()
            await wait_for(
                lambda: reported(gateway_store, DEVICE).get("mode") == "off",
                "the lamp's first report on the gateway",
            )

            # 1. desired in the cloud, through the running cloud's control socket
            done = await asyncio.to_thread(
                fleet,
                stack.cloud_config,
                "desired",
                "set",
                f"gw/{stack.gateway_id}",
                DEVICE,
                "mode",
                "eco",
                "--wait",
                "20",
            )
            assert done.returncode == 0, (done.stdout, done.stderr, stack.log("cloud")[-2000:])
            assert "applied on 1 of 1" in done.stdout, done.stdout
            # sync down, a `set` command to the device, its report: the twin follows
            await wait_for(
                lambda: reported(gateway_store, DEVICE).get("mode") == "eco",
                "the gateway's reported twin following the desired value",
                within_s=15,
            )
            assert lamp.applied == [{"mode": "eco"}]  # only the delta, once
            # and the cloud's copy of the reported twin, synced up
            await wait_for(
                lambda: reported(cloud_store, DEVICE).get("mode") == "eco",
                "the cloud's copy of the reported twin",
                within_s=15,
            )
            assert events(stack, MISMATCH) == []  # it landed at the first attempt

            # 2. the device goes offline; the cloud changes two fields meanwhile (the
            # authoring call over the control socket, as the CLI makes it)
            await lamp.offline()
            for field, value in (("mode", "away"), ("level", 3)):
                answer = await asyncio.to_thread(
                    send,
                    socket,
                    DesiredSet(
                        target=f"gw/{stack.gateway_id}", device=DEVICE, field=field, value=value
                    ),
                )
                assert answer.ok, answer
            # the gateway tries, the device does not answer: reported with its reason and
            # retried with backoff (two attempts at least while it is away)
            await wait_for(
                lambda: len(events(stack, MISMATCH)) >= 2,
                "two twin.desired.mismatch events in the cloud",
                within_s=30,
            )
            first = events(stack, MISMATCH)[0]
            assert first.severity == "warning"
            assert "did not answer" in str(first.attrs["reason"]), first.attrs
            assert first.attrs["fields"] == ["level", "mode"], first.attrs
            assert first.attrs["desired"] == {"mode": "away", "level": 3}
            assert first.attrs["reported"] == {"mode": "eco", "level": 0}
            assert reported(gateway_store, DEVICE)["mode"] == "eco"  # nothing landed
            assert lamp.applied == [{"mode": "eco"}]

            # 3. the device returns: its first report ends the backoff and the change lands
            back = time.monotonic()
            await lamp.online()
            await wait_for(
                lambda: (
                    reported(gateway_store, DEVICE).items() >= {"mode": "away", "level": 3}.items()
                ),
                "the change landing once the device is back",
                within_s=15,
            )
            took = time.monotonic() - back
            assert took < 10, took  # not the backoff's next slot, but the device's return
            assert lamp.applied[-1] == {"mode": "away", "level": 3}  # the newest state, whole
            await wait_for(
                lambda: bool(events(stack, APPLIED)),
                "twin.desired.applied in the cloud after the mismatches",
            )
            applied = events(stack, APPLIED)[0]
            assert applied.severity == "info"
            assert int(applied.attrs["attempts"]) >= 3, applied.attrs
            await wait_for(
                lambda: reported(cloud_store, DEVICE).get("mode") == "away",
                "the cloud's copy of the reported twin after the return",
                within_s=15,
            )
            # the applied marks: the gateway acknowledged the newest desired row
            shown = await asyncio.to_thread(
                fleet,
                stack.cloud_config,
                "applied",
                "twin.desired",
                f"{DEVICE}/level",
                "--target",
                f"gw/{stack.gateway_id}",
            )
            assert shown.returncode == 0, shown.stderr
            assert "applied on 1 of 1" in shown.stdout, shown.stdout
        finally:
            await lamp.offline()
