"""S1 in the cloud: the capability registry fed by gateway announcements, and the intent router.

:class:`CloudS1` holds one connection to the cloud broker that subscribes to every gateway's
retained announcement (``{prefix}/+/capabilities``) and intent updates
(``{prefix}/+/intents/updates``); its :attr:`CloudS1.router` sends intents. Add
:meth:`CloudS1.child_specs` to the cloud's supervisor; call ``router.send(...)`` from the API.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from amcp.link import CloudLinks
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import Link, Message, Session, SessionSpec, Transport
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext, ChildSpec
from amcp.store import Store
from amcp.wire import EnvelopeError, Opened, topics
from amcp.wire.messages import CapabilityAnnouncement
from cloud.s1.registry import CloudCapabilityRegistry, Owner
from cloud.s1.router import IntentRouter, Routed, RouterNotConnectedError
from cloud.s1.settings import CloudS1Settings

__all__ = [
    "CloudCapabilityRegistry",
    "CloudS1",
    "CloudS1Settings",
    "IntentRouter",
    "Owner",
    "Routed",
    "RouterNotConnectedError",
]

log = logging.getLogger(__name__)


def open_envelope(
    links: CloudLinks, gateway: str, data: bytes, topic: str, *, retained: bool
) -> Opened | None:
    """Open an envelope from ``gateway``; a retained announcement is judged by version.

    A retained copy may be older than the clock window and has been seen before, so it
    skips those two checks (docs/wire.md §5); ``None`` means "not newer, ignore".
    """
    if not retained:
        return links.open(gateway, data, topic)
    return links.open_retained(gateway, data, topic)


class CloudS1:
    def __init__(
        self,
        settings: CloudS1Settings,
        store: Store | Path,
        links: CloudLinks,
        *,
        broker: BrokerLink,
        site: str = "cloud",
        client_id: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self._store_path = store if isinstance(store, Path) else None
        self.store = Store(store, site=site) if isinstance(store, Path) else store
        self.links = links
        self.broker = broker
        self.client_id = client_id or settings.client_id
        self.registry = CloudCapabilityRegistry(self.store)
        self.router = IntentRouter(self.registry, links, settings)
        prefix = settings.topic_prefix.rstrip("/")
        self._prefix = prefix + "/"
        self.refused = 0
        self.session = Session(
            transport or MqttTransport(),
            broker,
            SessionSpec(
                self.client_id,
                (
                    topics.capabilities(prefix, "+"),
                    topics.intent_updates(prefix, "+"),
                ),
            ),
            name="s1",
        )

    @property
    def connected(self) -> bool:
        return self.session.connected

    def child_specs(self) -> list[ChildSpec]:
        if not self.settings.enabled:
            return []
        return [ChildSpec("s1", self.run, wait_ready=True, shutdown_timeout=10)]

    async def run(self, ctx: ChildContext) -> None:
        if self._store_path is None:
            await self._connect_loop(ctx)
            return
        store = Store(self._store_path, site=self.store.site)  # a closed store is done
        await store.open()
        self.store = self.registry.store = store
        try:
            await self._connect_loop(ctx)
        finally:
            await asyncio.shield(store.close())

    async def _connect_loop(self, ctx: ChildContext) -> None:
        await self.session.run(self._serve, on_connected=ctx.ready)

    async def _serve(self, link: Link) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self.router.attach(link, tg)
                async for message in link.messages():
                    await self._on_message(message)
        finally:
            self.router.attach(None, None)

    def _route(self, topic: str) -> tuple[str, str] | None:
        """``(gateway, leaf)`` of a topic this part handles, else None."""
        if not topic.startswith(self._prefix):
            return None
        gateway, _, leaf = topic[len(self._prefix) :].partition("/")
        if leaf not in ("capabilities", "intents/updates") or not gateway:
            return None
        return gateway, leaf

    async def _on_message(self, message: Message) -> None:
        topic = message.topic
        route = self._route(topic)
        if route is None or not message.payload:  # empty: a cleared retained announcement
            return
        gateway, leaf = route
        try:
            opened = await asyncio.to_thread(
                open_envelope,
                self.links,
                gateway,
                bytes(message.payload),
                topic,
                retained=bool(message.retain) and leaf == "capabilities",
            )
        except EnvelopeError as exc:
            self.refused += 1
            log.warning(
                "s1 envelope refused",
                extra={"gateway": gateway, "reason": exc.reason, "error": str(exc)},
            )
            return
        if opened is None:
            return
        if leaf == "intents/updates":
            self.router.deliver(gateway, opened)
        else:
            await self._register(gateway, opened)

    async def _register(self, gateway: str, opened: Opened) -> None:
        announcement = opened.message
        if not isinstance(announcement, CapabilityAnnouncement) or announcement.node != gateway:
            log.warning("bad announcement", extra={"gateway": gateway})
            return
        if await self.registry.apply(announcement):
            log.info(
                "capabilities registered",
                extra={"gateway": gateway, "version": announcement.version},
            )
            self.router.announced()
