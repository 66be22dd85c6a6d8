"""A device's side of the command protocol, for simulated devices (demo, tests, examples).

A handler is an async generator: it may ``yield Progress(...)`` and ``yield Partial(...)`` as
often as it likes and ends with ``yield Done(answer)``; raising fails the command with the
error's text. Each command runs in its own task, so a cancel command stops it mid-way::

    async def measure(args):
        for i in range(3):
            yield Partial({"sample": i})
        yield Done({"mean": 1.0})

    await DeviceResponder("pump-1", {"measure": measure}, host=h, port=p, password=pw).run()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import Link, SessionSpec, connect_once
from amcp.runtime.settings import BrokerLink
from amcp.wire import topics
from gateway.s1.devicewire import (
    COMMAND_DECODER,
    ENCODER,
    DeviceCommand,
    DeviceReply,
    ReplyState,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    fraction: float


@dataclass(frozen=True)
class Partial:
    data: Any


@dataclass(frozen=True)
class Done:
    data: Any = None


Step = Progress | Partial | Done
Handler = Callable[[dict[str, Any]], AsyncIterator[Step]]


class DeviceResponder:
    """Answers the commands of one device, logged in under the device's own account."""

    def __init__(
        self,
        device: str,
        handlers: Mapping[str, Handler],
        *,
        host: str,
        port: int,
        password: str | None,
        silent: bool = False,
    ) -> None:
        self.device = device
        self.handlers = dict(handlers)
        self.host = host
        self.port = port
        self.password = password
        self.silent = silent
        """Receive commands but never answer (an unresponsive device, for tests)."""
        self.received: list[DeviceCommand] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.subscribed = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}

    async def run(self, also: Callable[[Link], Coroutine[Any, Any, None]] | None = None) -> None:
        """Answer commands until cancelled. ``also`` runs beside it on the same connection (a
        device's telemetry): the broker gives each device one connection, its client id being
        its username, so a second login would end the first."""
        login = BrokerLink(
            host=self.host, port=self.port, username=self.device, password=self.password or ""
        )
        spec = SessionSpec(self.device, (topics.device_commands_filter(self.device),))
        async with (
            connect_once(MqttTransport(), login, spec) as client,
            asyncio.TaskGroup() as tg,
        ):
            self.subscribed.set()
            if also is not None:
                tg.create_task(also(client))
            async for message in client.messages():
                try:
                    command = COMMAND_DECODER.decode(message.payload)
                except (msgspec.DecodeError, UnicodeDecodeError):
                    log.warning("malformed command", extra={"device": self.device})
                    continue
                self.received.append(command)
                if command.cancel:
                    task = self._running.pop(command.id, None)
                    if task is not None:
                        task.cancel()
                        self.cancelled.append(command.id)
                    continue
                if self.silent:
                    continue
                self._running[command.id] = tg.create_task(self._serve(client, command))

    async def _serve(self, client: Link, command: DeviceCommand) -> None:
        topic = topics.response(self.device, command.id)

        async def send(state: ReplyState, **fields: Any) -> None:
            reply = DeviceReply(
                id=command.id, state=state, correlation=command.correlation, **fields
            )
            await client.publish(topic, ENCODER.encode(reply), qos=1)

        handler = self.handlers.get(command.action)
        try:
            if handler is None:
                await send("failed", error=f"unknown action {command.action!r}")
                return
            await send("accepted")
            async for step in handler(command.args):
                match step:
                    case Progress(fraction):
                        await send("progress", progress=fraction)
                    case Partial(data):
                        await send("partial", data=data)
                    case Done(data):
                        await send("done", data=data)
                        self.finished.append(command.id)
                        return
            await send("done")
            self.finished.append(command.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await send("failed", error=str(exc) or type(exc).__name__)
        finally:
            self._running.pop(command.id, None)
