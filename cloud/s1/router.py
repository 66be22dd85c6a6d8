"""The cloud's intent router: an intent to the gateway that owns its capability, updates back.

:meth:`IntentRouter.send` picks the owner from the registry (cheapest announced), seals the
:class:`~amcp.wire.messages.Intent` (with who asked, ``principal``, and their ``zone``: the
gateway applies that principal's quota) for that gateway's link with the intent id as
correlation id, and yields the gateway's :class:`~amcp.wire.messages.IntentUpdate`\\ s as
they arrive until ``done`` or ``failed``. The gateway enforces the time limit and answers
``failed/timeout`` itself; the router waits ``grace`` seconds longer and then answers for a
gateway that went silent. Leaving the iteration early cancels the intent on the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from amcp.link import CloudLinks
from amcp.runtime.session import Link, LinkLostError
from amcp.wire import Context, Opened, topics
from amcp.wire.messages import (
    INTENT_CANCEL,
    Command,
    FailureCode,
    Intent,
    IntentUpdate,
)
from cloud.s1.registry import CloudCapabilityRegistry
from cloud.s1.settings import CloudS1Settings

log = logging.getLogger(__name__)

FINAL = frozenset({"done", "failed"})


@dataclass(frozen=True)
class Routed:
    """An update with where it came from: the gateway and the envelope's correlation id."""

    update: IntentUpdate
    gateway: str
    correlation_id: str | None


class RouterNotConnectedError(ConnectionError):
    """The router's cloud-broker connection is not up."""


class IntentRouter:
    def __init__(
        self, registry: CloudCapabilityRegistry, links: CloudLinks, settings: CloudS1Settings
    ) -> None:
        self.registry = registry
        self.links = links
        self.settings = settings
        self._client: Link | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._connected = asyncio.Event()
        self._announced = asyncio.Event()
        self._streams: dict[str, tuple[str, asyncio.Queue[Routed]]] = {}

    # -- wiring (called by CloudS1's connection loop) -------------------------------------
    def attach(self, client: Link | None, tg: asyncio.TaskGroup | None) -> None:
        self._client, self._tg = client, tg
        if client is None:
            self._connected.clear()
        else:
            self._connected.set()

    def announced(self) -> None:
        """A new announcement was stored: wake senders waiting for a capability."""
        self._announced.set()

    def deliver(self, gateway: str, opened: Opened) -> None:
        update = opened.message
        if not isinstance(update, IntentUpdate):
            return
        entry = self._streams.get(update.intent_id)
        if entry is None or entry[0] != gateway:
            return  # not ours (another router instance), or a gateway answering for another
        if opened.header.correlation_id != update.intent_id:
            log.warning("update with a foreign correlation id", extra={"intent": update.intent_id})
            return
        entry[1].put_nowait(Routed(update, gateway, opened.header.correlation_id))

    # -- API ------------------------------------------------------------------------------
    def send(
        self,
        capability: str,
        args: dict[str, Any],
        timeout: float | None = None,
        *,
        text: str = "",
        gateway: str | None = None,
        principal: str = "",
        zone: str = "",
    ) -> AsyncIterator[IntentUpdate]:
        """The intent's updates, ending with ``done`` or ``failed``. ``principal`` is who
        asks (``user:<name>`` or ``service:<name>``), ``zone`` the zone they ask from."""

        async def updates() -> AsyncGenerator[IntentUpdate, None]:
            async with contextlib.aclosing(
                self.stream(
                    capability,
                    args,
                    timeout,
                    text=text,
                    gateway=gateway,
                    principal=principal,
                    zone=zone,
                )
            ) as stream:
                async for routed in stream:
                    yield routed.update

        return updates()

    async def stream(
        self,
        capability: str,
        args: dict[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109 - enforced by the gateway, not here
        *,
        text: str = "",
        gateway: str | None = None,
        principal: str = "",
        zone: str = "",
    ) -> AsyncGenerator[Routed, None]:
        """Like :meth:`send`, with each update's gateway and correlation id."""
        limit = timeout or self.settings.default_timeout
        intent_id = uuid.uuid4().hex
        target = gateway or await self._owner(capability)
        if target is None:
            yield _failed(intent_id, "unknown_capability", f"no gateway offers {capability!r}")
            return
        client = self._client
        if client is None:
            raise RouterNotConnectedError("the router is not connected to the cloud broker")
        queue: asyncio.Queue[Routed] = asyncio.Queue()
        self._streams[intent_id] = (target, queue)
        finished = False
        try:
            intent = Intent(
                intent_id,
                text,
                capability,
                args,
                timeout_ms=int(limit * 1000),
                principal=principal,
                zone=zone,
            )
            topic = topics.intents(self.settings.topic_prefix, target)
            data = self.links.seal(target, intent, topic, Context(correlation_id=intent_id))
            await client.publish(topic, data, qos=1)
            deadline = asyncio.get_running_loop().time() + limit + self.settings.grace
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        routed = await queue.get()
                except TimeoutError:
                    message = f"no answer from gateway {target!r} within {limit:g} s"
                    yield _failed(intent_id, "timeout", message, target)
                    return
                finished = routed.update.state in FINAL
                yield routed
                if finished:
                    return
        finally:
            del self._streams[intent_id]
            if not finished and self._tg is not None:
                self._tg.create_task(self._cancel(target, intent_id))

    async def _owner(self, capability: str) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.discovery_wait
        while True:
            self._announced.clear()
            owners = await self.registry.owners(capability)
            if owners:
                return owners[0].gateway
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._announced.wait()

    async def _cancel(self, gateway: str, intent_id: str) -> None:
        client = self._client
        if client is None:
            return
        topic = topics.intents(self.settings.topic_prefix, gateway)
        command = Command(command_id=uuid.uuid4().hex, target=intent_id, action=INTENT_CANCEL)
        data = self.links.seal(gateway, command, topic, Context(correlation_id=intent_id))
        with contextlib.suppress(LinkLostError):
            await client.publish(topic, data, qos=1)

    async def cancel(self, intent_id: str) -> bool:
        """Cancel an intent this router is streaming (the stream then ends ``failed``)."""
        entry = self._streams.get(intent_id)
        if entry is None:
            return False
        await self._cancel(entry[0], intent_id)
        return True


def _failed(intent_id: str, code: FailureCode, message: str, gateway: str = "") -> Routed:
    return Routed(
        IntentUpdate(intent_id, "failed", error=message, code=code, seq=-1), gateway, intent_id
    )
