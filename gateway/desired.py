"""Desired twins: what the cloud wants a device to be becomes a device command, until it is.

The cloud writes ``twin.desired`` rows (:mod:`amcp.store.twins`, one row per top-level field);
sync brings them into the gateway's store, whose subscription wakes :class:`DesiredTwins`. For
each device whose desired fields differ from its reported ones (the twin's *delta*):

1. one **direct device command** ``set`` with the delta as its args goes to the device through
   S1 (``S1.command``): it takes the device's S2 lease like every other command (queued behind
   an intent or rule action driving the device, FIFO) and succeeds when the device answers
   ``done``. A capability is not used: a desired value is state of one device, not work any
   device offering a capability may do;
2. the loop closes on the **reported twin** (``twin.reported``, written from the device's
   telemetry by :class:`gateway.twins.TwinReporter`): once every desired field is reported
   with its value, the device is done;
3. otherwise (the command failed, the device did not answer, the lease was refused, or the
   report still differs ``confirm_s`` seconds after the device's ``done``) a
   ``twin.desired.mismatch`` event (warning) with its ``reason`` goes to the cloud through the
   gateway's event writer, and the command is sent again after an exponential backoff with
   jitter (``retry_initial`` doubling up to ``retry_max``). A device that did not answer is
   tried again as soon as it reports anything (it is back), so an offline device gets the
   change when it returns. A newer desired value is sent at once. ``twin.desired.applied``
   (info) follows a mismatch once the device converges.

A device that never reported to this gateway is left alone (nothing sent, no mismatch): the
cloud's desired rows reach every gateway, and a device belongs to the one it reports to; its
first report here starts the loop. One task per device with a delta, none for the rest; a
device's desired rows are read again at every attempt, so only the newest desired state is ever
sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from amcp.runtime.session import Backoff
from amcp.runtime.supervisor import ChildContext
from amcp.store import Change, Store
from amcp.store.twins import DESIRED, REPORTED, Twins
from amcp.wire.telemetry import EventRecord
from gateway.rules.actions import SendCommand
from gateway.s1.commands import NotConnectedError
from gateway.s1.errors import DeviceFailedError, DeviceTimeoutError
from gateway.s2.leases import LeaseRefusedError

log = logging.getLogger(__name__)

MISMATCH = "twin.desired.mismatch"
APPLIED = "twin.desired.applied"

Report = Callable[[list[EventRecord]], object]
"""The gateway's event writer (``EventWriter.submit``)."""


def _why(exc: Exception) -> tuple[str, bool]:
    """Why a command did not land, and whether the device looks offline."""
    if isinstance(exc, DeviceTimeoutError):
        return f"the device did not answer: {exc}", True
    if isinstance(exc, NotConnectedError):
        return f"the gateway's local broker is not connected: {exc}", True
    if isinstance(exc, LeaseRefusedError):
        return f"lease refused: {exc}", False
    if isinstance(exc, DeviceFailedError):
        return f"the device refused the change: {exc}", False
    return f"{type(exc).__name__}: {exc}", False


def _device_of(key: str) -> str:
    return key.split("/", 1)[0]


class DesiredTwins:
    def __init__(
        self,
        store: Store,
        command: SendCommand,
        report: Report,
        *,
        action: str = "set",
        confirm_s: float = 10.0,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        command_timeout: float | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.twins = Twins(store)
        self._command = command
        self._report = report
        self.action = action
        self.confirm_s = confirm_s
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.command_timeout = command_timeout
        self._wall = wall
        self.waiting: set[str] = set()
        """Devices with desired rows that never reported to this gateway (nothing sent)."""
        self._known: set[str] = set()
        """Devices with desired rows (a reported change of these is checked for drift)."""
        self._pending: set[str] = set()
        self._kick = asyncio.Event()
        self._wake: dict[str, asyncio.Event] = {}
        self._desired_changed: set[str] = set()
        self._reported_changed: set[str] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self.commands = 0
        self.applied = 0
        self.mismatches = 0

    @property
    def converging(self) -> list[str]:
        """Devices with a delta being worked on."""
        return sorted(self._workers)

    # -- store notifications (on the event loop) -------------------------------------------
    def _on_desired(self, changes: list[Change]) -> None:
        for change in changes:
            device = _device_of(change.key)
            self._known.add(device)
            self._desired_changed.add(device)
            self._touch(device)

    def _on_reported(self, changes: list[Change]) -> None:
        for change in changes:
            device = _device_of(change.key)
            if device in self._known:
                self._reported_changed.add(device)
                self._touch(device)

    def _touch(self, device: str) -> None:
        self._pending.add(device)
        self._kick.set()
        event = self._wake.get(device)
        if event is not None:
            event.set()

    # -- running ----------------------------------------------------------------------------
    async def run(self, ctx: ChildContext) -> None:
        loop = asyncio.get_running_loop()
        unsubscribe = [
            self.store.subscribe(DESIRED, self._on_desired, loop=loop),
            self.store.subscribe(REPORTED, self._on_reported, loop=loop),
        ]
        try:
            for key in await self.store.items(DESIRED):  # what was desired while we were down
                self._known.add(_device_of(key))
            self._pending |= self._known
            ctx.ready()
            async with asyncio.TaskGroup() as tg:
                while True:
                    await self._kick.wait()
                    self._kick.clear()
                    pending, self._pending = self._pending, set()
                    for device in pending - self._workers.keys():
                        self._workers[device] = tg.create_task(
                            self._converge(device), name=f"desired:{device}"
                        )
        finally:
            for stop in unsubscribe:
                stop()

    async def _converge(self, device: str) -> None:
        wake = self._wake.setdefault(device, asyncio.Event())
        backoff = Backoff(self.retry_initial, self.retry_max)
        attempt = 0
        mismatched = False
        try:
            while True:
                wake.clear()
                self._desired_changed.discard(device)
                self._reported_changed.discard(device)
                twin = await self.twins.get(device)
                if not twin.desired:
                    self._known.discard(device)
                if not twin.reported and not mismatched:
                    # never heard from here: another gateway's device (desired rows reach
                    # every gateway), or one that has not reported yet; its first report
                    # brings it back here (_on_reported)
                    self.waiting.add(device)
                    return
                self.waiting.discard(device)
                if not twin.delta:
                    if mismatched:
                        self.applied += 1
                        self._event(APPLIED, device, "info", {"attempts": attempt})
                    return
                attempt += 1
                reason, offline = await self._attempt(device, twin.delta)
                if reason is None:
                    continue  # the report matches (or the desired state moved): look again
                delay = backoff.next_delay()
                mismatched = True
                self.mismatches += 1
                attrs = {
                    "fields": sorted(twin.delta),
                    "desired": twin.delta,
                    "reported": {k: twin.reported.get(k) for k in twin.delta},
                    "reason": reason,
                    "attempt": attempt,
                    "retry_in_s": round(delay, 3),
                }
                self._event(MISMATCH, device, "warning", attrs)
                log.info("desired twin not applied", extra={"device": device, "reason": reason})
                await self._pause(device, wake, delay, offline=offline)
        finally:
            self._workers.pop(device, None)
            self._wake.pop(device, None)
            if device in self._pending:
                self._kick.set()  # a change came as this worker ended: start another

    async def _attempt(self, device: str, delta: dict[str, Any]) -> tuple[str | None, bool]:
        """Send the delta; ``(None, _)`` when the report then matches, else why not and
        whether the device looks offline (retried as soon as it reports again)."""
        try:
            self.commands += 1
            await self._command(
                device,
                self.action,
                dict(delta),
                holder=f"twin:{device}",
                correlation=f"twin:{device}",
                timeout=self.command_timeout,
            )
        except Exception as exc:  # reported and retried, never fatal to the loop
            return _why(exc)
        if await self._confirmed(device):
            return None, False
        twin = await self.twins.get(device)
        if not twin.delta:
            return None, False
        differs = ", ".join(
            f"{k}: want {v!r}, reported {twin.reported.get(k)!r}"
            for k, v in sorted(twin.delta.items())
        )
        why = f"the device answered done but its report still differs after {self.confirm_s:g} s"
        return f"{why} ({differs})", False

    async def _confirmed(self, device: str) -> bool:
        """Wait up to ``confirm_s`` for the reported twin to match (or the desired to move)."""
        wake = self._wake[device]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.confirm_s
        while True:
            wake.clear()
            if device in self._desired_changed:
                return True  # a newer desired value: the caller looks again at once
            if not (await self.twins.get(device)).delta:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await wake.wait()
            except TimeoutError:
                pass

    async def _pause(
        self, device: str, wake: asyncio.Event, delay: float, *, offline: bool
    ) -> None:
        """Back off ``delay`` seconds; a newer desired value ends it, and so does any report
        of a device that looked offline (it is back)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (remaining := deadline - loop.time()) > 0:
            wake.clear()
            if device in self._desired_changed or (offline and device in self._reported_changed):
                return
            try:
                async with asyncio.timeout(remaining):
                    await wake.wait()
            except TimeoutError:
                return

    def _event(self, name: str, device: str, severity: str, attrs: dict[str, Any]) -> None:
        self._report([EventRecord(name, int(self._wall() * 1000), device, severity, attrs)])
