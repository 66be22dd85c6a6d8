"""S1 on the gateway↔cloud link: intents in, updates out, the capability announcement.

One connection to the cloud broker, every message in an envelope sealed with the link's keys
(:class:`~amcp.link.GatewayLink`). Updates are sealed with the context derived from the
intent's envelope, so they carry its correlation id and continue its trace. The announcement
is published retained and re-published every ``announce_interval`` and whenever the registry
changes; its version moves only when the capabilities do.
"""

from __future__ import annotations

import asyncio
import logging

from amcp.link import GatewayLink
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import Link, Message, Session, SessionSpec, Transport
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.store.lww import Change
from amcp.wire import EnvelopeError, Opened, derive, topics
from amcp.wire.messages import (
    INTENT_CANCEL,
    Command,
    Intent,
    IntentUpdate,
)
from gateway.s1.dispatcher import Dispatcher
from gateway.s1.registry import NAMESPACE, CapabilityRegistry
from gateway.s1.settings import S1Settings

log = logging.getLogger(__name__)


class LinkServer:
    def __init__(
        self,
        gateway: str,
        settings: S1Settings,
        *,
        broker: BrokerLink,
        link: GatewayLink,
        dispatcher: Dispatcher,
        registry: CapabilityRegistry,
        transport: Transport | None = None,
    ) -> None:
        self.gateway = gateway
        self.settings = settings
        self.broker = broker
        self.link = link
        self.dispatcher = dispatcher
        self.registry = registry
        prefix = settings.topic_prefix
        self.intents_topic = topics.intents(prefix, gateway)
        self.updates_topic = topics.intent_updates(prefix, gateway)
        self.capabilities_topic = topics.capabilities(prefix, gateway)
        self._changed = asyncio.Event()
        self.session = Session(
            transport or MqttTransport(),
            broker,
            SessionSpec(f"{gateway}-s1", (self.intents_topic,)),
            name="s1",
        )
        self.refused = 0
        self.announced_version = 0

    @property
    def connected(self) -> bool:
        return self.session.connected

    async def run(self, ctx: ChildContext) -> None:
        unsubscribe = self.registry.store.subscribe(
            NAMESPACE, self._on_registry_change, loop=asyncio.get_running_loop()
        )
        try:
            await self.session.run(lambda link: self._serve_link(link, ctx))
        finally:
            unsubscribe()

    async def _serve_link(self, client: Link, ctx: ChildContext) -> None:
        await self._announce(client)
        ctx.ready()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._announce_loop(client), name="s1-announce")
            async for message in client.messages():
                await self._on_message(tg, client, message)

    def _on_registry_change(self, _changes: list[Change]) -> None:
        self._changed.set()

    async def _announce(self, client: Link) -> None:
        self._changed.clear()
        announcement = await self.registry.announcement()
        data = self.link.seal(announcement, self.capabilities_topic)
        await client.publish(self.capabilities_topic, data, qos=1, retain=True)
        if announcement.version != self.announced_version:
            log.info(
                "capabilities announced",
                extra={"version": announcement.version, "count": len(announcement.capabilities)},
            )
        self.announced_version = announcement.version

    async def _announce_loop(self, client: Link) -> None:
        while True:
            try:
                async with asyncio.timeout(self.settings.announce_interval):
                    await self._changed.wait()
            except TimeoutError:
                pass
            await self._announce(client)

    async def _on_message(self, tg: asyncio.TaskGroup, client: Link, message: Message) -> None:
        topic = message.topic
        if topic != self.intents_topic:
            return
        try:
            opened = await asyncio.to_thread(self.link.open, bytes(message.payload), topic)
        except EnvelopeError as exc:
            self.refused += 1
            log.warning("intent envelope refused", extra={"reason": exc.reason, "error": str(exc)})
            return
        match opened.message:
            case Intent() as intent:
                tg.create_task(
                    self._serve(client, intent, opened), name=f"intent:{intent.intent_id}"
                )
            case Command(action=action, target=target) if action == INTENT_CANCEL:
                self.dispatcher.cancel(target)
            case other:
                log.warning(
                    "unexpected message on the intents topic", extra={"kind": type(other).__name__}
                )

    async def _serve(self, client: Link, intent: Intent, opened: Opened) -> None:
        context = derive(opened.header)

        async def emit(update: IntentUpdate) -> None:
            data = self.link.seal(update, self.updates_topic, context)
            await client.publish(self.updates_topic, data, qos=1)

        await self.dispatcher.run(intent, emit, correlation=context.correlation_id)
