"""Device commands over the local broker: publish, correlate replies, time out, cancel.

One MQTT connection serves every command: replies arrive on ``devices/+/responses/+`` and are
routed to the open command by its id (and only if they came from that command's device: the
topic names the sender, and the broker's ACL makes the topic trustworthy). Each open command
buffers its undelivered replies; those bytes count against the unit that runs it, so a device
that floods replies faster than the cloud takes them trips the unit's memory quota instead of
growing the gateway without bound.

Every command takes the S2 lease on its device first (:meth:`gateway.s2.leases.LeaseTable.take`):
a second command to a busy device waits in the device's FIFO queue, or fails with
:class:`~gateway.s2.leases.LeaseRefusedError` when the queue is full or the wait too long. The
lease is checked (fencing token) right before the command is published, renewed while the
device is working and released when it answers ``done``/``failed``, times out or is cancelled
(docs/s2.md, "Actuator leases"). This is the one place device commands are sent from: intents,
rule actions and desired twins all come here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import msgspec

from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import Link, LinkLostError, Session, SessionSpec, Transport
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.wire import topics
from gateway.s1.devicewire import (
    ENCODER,
    FINAL_STATES,
    REPLY_DECODER,
    DeviceCommand,
    DeviceReply,
    parse_response_topic,
)
from gateway.s1.errors import DeviceFailedError, DeviceTimeoutError, MemoryQuotaError
from gateway.s1.units import Unit
from gateway.s2.leases import Lease, LeaseRefusedError, LeaseTable, RefusalReason, Refused

log = logging.getLogger(__name__)


@dataclass
class _Open:
    device: str
    unit: Unit | None
    queue: asyncio.Queue[tuple[DeviceReply, int] | MemoryQuotaError] = field(
        default_factory=asyncio.Queue
    )
    buffered: int = 0
    renewed: float = 0.0
    """When the command's lease was last taken or renewed (event loop time)."""


class NotConnectedError(ConnectionError):
    """The local broker connection is down; the command was not sent."""


class CommandExecutor:
    """Runs device commands over one local-broker connection (a supervised child)."""

    def __init__(
        self,
        broker: BrokerLink,
        client_id: str,
        *,
        transport: Transport | None = None,
        leases: LeaseTable | None = None,
    ) -> None:
        """``leases``: S2's lease table (the daemon's); without one the executor keeps its own,
        so commands are serialized per device in every setup."""
        self.broker = broker
        self.leases = leases if leases is not None else LeaseTable(time.monotonic)
        self.client_id = client_id
        self.session = Session(
            transport or MqttTransport(),
            broker,
            SessionSpec(client_id, (topics.RESPONSES_FILTER,)),
            name="s1-devices",
        )
        self._client: Link | None = None
        self._connected = asyncio.Event()
        self._open: dict[str, _Open] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.malformed = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, within: float) -> None:
        async with asyncio.timeout(within):
            await self._connected.wait()

    async def run(self, ctx: ChildContext) -> None:
        await self.session.run(self._serve, on_connected=ctx.ready)

    async def _serve(self, link: Link) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._client, self._tg = link, tg
                self._connected.set()
                async for message in link.messages():
                    self._on_message(message.topic, message.payload)
        finally:
            self._connected.clear()
            self._client = self._tg = None

    def _on_message(self, topic: str, payload: object) -> None:
        where = parse_response_topic(topic)
        if where is None or not isinstance(payload, bytes | bytearray):
            return
        device, command_id = where
        entry = self._open.get(command_id)
        if entry is None or entry.device != device:
            return  # late reply to a finished command, or another device's topic
        try:
            reply = REPLY_DECODER.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec: bad UTF-8 in a str
            self.malformed += 1
            log.warning("malformed device reply", extra={"device": device, "error": str(exc)})
            return
        if reply.id != command_id:
            self.malformed += 1
            return
        size = len(payload)
        if entry.unit is not None:
            try:
                entry.unit.reserve(size)
            except MemoryQuotaError as exc:
                entry.queue.put_nowait(exc)
                return
        entry.buffered += size
        entry.queue.put_nowait((reply, size))

    async def _publish(self, device: str, command: DeviceCommand) -> None:
        client = self._client
        if client is None:
            raise NotConnectedError(f"local broker not connected; command to {device!r} not sent")
        await client.publish(topics.command(device, command.id), ENCODER.encode(command), qos=1)

    async def _cancel(self, device: str, command: DeviceCommand) -> None:
        cancel = DeviceCommand(
            id=command.id, action=command.action, correlation=command.correlation, cancel=True
        )
        with contextlib.suppress(LinkLostError, NotConnectedError):
            await self._publish(device, cancel)

    async def execute(
        self,
        device: str,
        action: str,
        args: dict[str, object],
        *,
        idle_timeout: float,
        correlation: str | None = None,
        unit: Unit | None = None,
        holder: str = "s1",
        actuator: str | None = None,
    ) -> AsyncGenerator[DeviceReply, None]:
        """Take the device's lease (as ``holder``), send one command and yield the device's
        replies up to and including ``done``.

        Raises :class:`~gateway.s2.leases.LeaseRefusedError` when the lease is refused,
        :class:`DeviceTimeoutError` when the device sends nothing for ``idle_timeout``
        seconds, :class:`DeviceFailedError` on a ``failed`` reply. Leaving the iteration early
        (cancellation, the consumer stopped) sends the device a cancel for this command.
        """
        command = DeviceCommand(
            id=os.urandom(8).hex(),
            action=action,
            args=dict(args),
            correlation=correlation,
            timeout_ms=int(idle_timeout * 1000),
        )
        lease = await self.leases.take(device, holder, command.id, actuator=actuator)
        entry = self._open[command.id] = _Open(device, unit)
        entry.renewed = asyncio.get_running_loop().time()
        finished = False
        try:
            if not self.leases.valid(device, lease.token):  # fencing: expired while queued
                raise LeaseRefusedError(_lost(lease))
            await self._publish(device, command)
            while True:
                item, lease = await self._next(entry, lease, idle_timeout, action, command.id)
                if isinstance(item, MemoryQuotaError):
                    raise item
                reply, size = item
                entry.buffered -= size
                if unit is not None:
                    unit.release(size)
                if reply.state == "failed":
                    finished = True
                    raise DeviceFailedError(device, command.id, action, reply.error or "no reason")
                finished = reply.state in FINAL_STATES
                yield reply
                if finished:
                    return
        finally:
            self.leases.release(lease)
            del self._open[command.id]
            if unit is not None:
                unit.release(entry.buffered)
            if not finished and self._tg is not None:
                self._tg.create_task(self._cancel(device, command))

    async def _next(
        self, entry: _Open, lease: Lease, idle_timeout: float, action: str, command_id: str
    ) -> tuple[tuple[DeviceReply, int] | MemoryQuotaError, Lease]:
        """The next reply within ``idle_timeout``, renewing the lease while the device works
        (every third of its time to live), so a long command keeps it and a dead gateway task
        does not: its lease simply expires."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + idle_timeout
        step = self.leases.ttl_s / 3
        while True:
            if loop.time() - entry.renewed >= step:
                renewed = self.leases.renew(lease)
                if isinstance(renewed, Refused):
                    raise LeaseRefusedError(renewed)
                lease, entry.renewed = renewed.lease, loop.time()
            wait = min(deadline - loop.time(), entry.renewed + step - loop.time())
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    return await entry.queue.get(), lease
            except TimeoutError:
                if loop.time() >= deadline:
                    raise DeviceTimeoutError(
                        entry.device, command_id, action, idle_timeout
                    ) from None


def _lost(lease: Lease) -> Refused:
    return Refused(RefusalReason.NOT_HOLDER, lease.device, lease.actuator, lease.command_id)
