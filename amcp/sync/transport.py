"""Sync over MQTT: every frame sealed in an aMCP envelope on the gateway↔cloud link.

Topics (``prefix`` is ``[sync] topic_prefix``, ``cybernetic/gw`` by default)::

    {prefix}/{gateway}/sync/up      gateway → cloud   (HMAC "up" key of that link)
    {prefix}/{gateway}/sync/down    cloud → gateway   ("down" key)

Both sides use clean MQTT sessions: nothing is lost by that, because a stream resumes from
committed watermarks after every (re)connect, and frames queued for an absent peer would
only be resent anyway. The cloud learns the gateway from the topic and
:meth:`~amcp.link.CloudLinks.open` checks that the envelope was signed by that gateway, so a
gateway can neither impersonate another nor sync rows under another's name.

:class:`GatewaySync` and :class:`CloudSync` each expose ``run(ctx)`` for a supervision tree.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from amcp.link import DEFAULT_CLOUD_ID, CloudLinks, GatewayLink
from amcp.runtime.clock import Clock
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import Link, Session, SessionSpec, Transport
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.sync.authority import Refusal
from amcp.sync.engine import Send, SyncEngine
from amcp.sync.frames import STREAM, Frame, FrameError, decode_frame, encode_frame
from amcp.sync.settings import SyncSettings
from amcp.sync.stats import Role
from amcp.wire import EnvelopeError, Opened, SyncFrame, topics

log = logging.getLogger(__name__)


class _MqttSync:
    """The connection loop both sides share: connect, subscribe, serve, back off, retry."""

    subscription = ""

    def __init__(
        self,
        settings: SyncSettings,
        store: Store | Path,
        broker: BrokerLink,
        *,
        site: str,
        role: Role,
        cloud: str,
        clock: Clock | None,
        on_refused: Callable[[Refusal], None] | None,
        transport: Transport | None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.transport = transport or MqttTransport()
        self.prefix = settings.topic_prefix.rstrip("/")
        self._owns_store = not isinstance(store, Store)
        self.store = Store(store, site=site) if isinstance(store, Path) else store
        self.engine = SyncEngine(
            self.store, role, settings, cloud_site=cloud, clock=clock, on_refused=on_refused
        )
        self.client_id = settings.client_id or f"{site}-sync"
        self.session: Session | None = None
        self.envelopes_refused = 0

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.connected

    async def run(self, ctx: ChildContext) -> None:
        if self._owns_store:
            await self.store.open()
        # Ready at once: working offline is normal, a missing cloud must not block start-up.
        ctx.ready()
        try:
            await self._connect_loop()
        finally:
            if self._owns_store:
                await asyncio.shield(self.store.close())

    async def _connect_loop(self) -> None:
        # made here, not in __init__: a subclass sets the subscription after super().__init__
        self.session = Session(
            self.transport,
            self.broker,
            SessionSpec(self.client_id, (self.subscription,)),
            name="sync",
        )
        await self.session.run(self._serve)

    async def _serve(self, client: Link) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.engine.serve(self._sender(client)), name="sync")
            tg.create_task(self._receive(client), name="sync-receive")

    def _sender(self, client: Link) -> Send:
        async def send(peer: str, frame: Frame) -> None:
            sealed = self._seal(peer, SyncFrame(stream=STREAM, data=encode_frame(frame)))
            if sealed is None:
                return
            topic, payload = sealed
            self.engine.stats.bytes_sent += len(payload)
            await client.publish(topic, payload, qos=1)

        return send

    def _seal(self, peer: str, message: SyncFrame) -> tuple[str, bytes] | None:
        raise NotImplementedError

    def _open(self, topic: str, payload: bytes) -> tuple[str, Opened] | None:
        raise NotImplementedError

    async def _receive(self, client: Link) -> None:
        async for message in client.messages():
            payload = message.payload
            topic = message.topic
            try:
                opened = await asyncio.to_thread(self._open, topic, payload)
            except EnvelopeError as exc:
                self.envelopes_refused += 1
                log.warning("sync envelope refused", extra={"reason": exc.reason, "topic": topic})
                continue
            if opened is None:
                continue
            peer, envelope = opened
            frame = self._frame(envelope)
            if frame is not None:
                self.engine.stats.bytes_received += len(payload)
                await self.engine.receive(peer, frame)

    def _frame(self, opened: Opened) -> Frame | None:
        message = opened.message
        if not isinstance(message, SyncFrame) or message.stream != STREAM:
            log.warning("unexpected message on a sync topic", extra={"topic": opened.topic})
            return None
        try:
            return decode_frame(message.data)
        except FrameError as exc:
            self.engine.stats.malformed += 1
            log.warning("malformed sync frame", extra={"error": str(exc)})
            return None


class GatewaySync(_MqttSync):
    """The gateway's side: one peer, the cloud."""

    def __init__(
        self,
        settings: SyncSettings,
        store: Store | Path,
        link: GatewayLink,
        broker: BrokerLink,
        *,
        gateway: str,
        cloud: str = DEFAULT_CLOUD_ID,
        clock: Clock | None = None,
        on_refused: Callable[[Refusal], None] | None = None,
        transport: Transport | None = None,
    ) -> None:
        super().__init__(
            settings,
            store,
            broker,
            site=gateway,
            role=Role.GATEWAY,
            cloud=cloud,
            clock=clock,
            on_refused=on_refused,
            transport=transport,
        )
        self.gateway = gateway
        self.cloud = cloud
        self.link = link
        self.subscription = topics.sync_down(self.prefix, gateway)

    def _seal(self, peer: str, message: SyncFrame) -> tuple[str, bytes] | None:  # noqa: ARG002
        topic = topics.sync_up(self.prefix, self.gateway)
        return topic, self.link.seal(message, topic)

    def _open(self, topic: str, payload: bytes) -> tuple[str, Opened] | None:
        return self.cloud, self.link.open(payload, topic)


class CloudSync(_MqttSync):
    """The cloud's side: every gateway whose link secret it holds, one stream each."""

    def __init__(
        self,
        settings: SyncSettings,
        store: Store | Path,
        links: CloudLinks,
        broker: BrokerLink,
        *,
        cloud: str = DEFAULT_CLOUD_ID,
        clock: Clock | None = None,
        on_refused: Callable[[Refusal], None] | None = None,
        transport: Transport | None = None,
    ) -> None:
        super().__init__(
            settings,
            store,
            broker,
            site=cloud,
            role=Role.CLOUD,
            cloud=cloud,
            clock=clock,
            on_refused=on_refused,
            transport=transport,
        )
        self.links = links
        self.subscription = topics.sync_up(self.prefix, "+")

    def _seal(self, peer: str, message: SyncFrame) -> tuple[str, bytes] | None:
        topic = topics.sync_down(self.prefix, peer)
        try:
            return topic, self.links.seal(peer, message, topic)
        except EnvelopeError as exc:  # e.g. the gateway's link secret was removed
            log.warning("cannot seal for gateway", extra={"gateway": peer, "reason": exc.reason})
            return None

    def _open(self, topic: str, payload: bytes) -> tuple[str, Opened] | None:
        gateway = topics.gateway_of(self.prefix, topic, "sync/up")
        if gateway is None:
            return None
        return gateway, self.links.open(gateway, payload, topic)
