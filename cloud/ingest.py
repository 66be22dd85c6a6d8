"""Cloud ingest: gateway batches from the cloud broker into the reading store, then the ack.

The subscription is a persistent session, so batches sent while the cloud process is down wait
in the broker. The application-level :class:`~amcp.wire.telemetry.BatchAck` is published only
after the store committed; a gateway deletes a batch only when it sees that ack. Batches that
arrive while a commit runs go into the next one together (group commit: one fsync for many
gateways' batches). A malformed batch is logged and counted, and never stops the loop.

Nothing a gateway sends can stop ingest: readings a verified batch carries that the store
cannot represent are left out and listed in the ack (the gateway dead-letters them); an
authentic batch that arrives stale (queued while the cloud was down, or stamped before this
process's unclean restart) is answered with a :class:`~amcp.wire.telemetry.BatchNack` asking
for it again in a fresh envelope; an authentic batch that cannot be decoded or stored at all
is nacked for good. A full disk pauses ingest with the batches unacknowledged (the broker
keeps them) until space returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from amcp.link import CloudLinks
from amcp.runtime.database import is_database_failure
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import (
    DirectCallback,
    Link,
    Session,
    SessionSpec,
    Transport,
)
from amcp.runtime.settings import BrokerLink
from amcp.runtime.storage import StorageFullError
from amcp.runtime.supervisor import ChildContext
from amcp.wire import (
    EnvelopeError,
    Header,
    MalformedPayloadError,
    ReplayedEnvelopeError,
    StaleEnvelopeError,
    derive,
    topics,
)
from amcp.wire.telemetry import BatchAck, BatchNack, TelemetryBatch
from cloud.config import CloudIngestSettings
from cloud.readings import Claim, ReadingStore, StoreBatch, Stored
from cloud.storage.engine import StorageFailedError

log = logging.getLogger(__name__)


class CloudIngest:
    def __init__(
        self,
        settings: CloudIngestSettings,
        store: ReadingStore,
        registry: CollectorRegistry,
        links: CloudLinks,
        *,
        broker: BrokerLink,
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.links = links
        self.prefix = settings.topic_prefix
        # persistent (batches queue in the broker while the cloud is down), acknowledged by
        # hand once committed
        self.session = Session(
            transport or MqttTransport(),
            broker,
            SessionSpec(
                settings.session,
                # the urgent lane (algedonic signals, alerts) is stored as it comes, like a batch
                (
                    topics.shared(settings.shared_group, topics.telemetry_filter(self.prefix)),
                    topics.shared(settings.shared_group, topics.urgent_filter(self.prefix)),
                ),
                clean_session=False,
                manual_ack=True,
            ),
            name="cloud-ingest",
        )
        self.batches = Counter(
            "cybernetic_cloud_batches", "Gateway batches committed", registry=registry
        )
        self.stored = Counter(
            "cybernetic_cloud_stored_readings", "Readings stored", registry=registry
        )
        self.duplicates = Counter(
            "cybernetic_cloud_duplicate_readings",
            "Readings dropped as duplicates",
            registry=registry,
        )
        self.malformed = Counter(
            "cybernetic_cloud_malformed_batches", "Batches that failed to decode", registry=registry
        )
        self.refused = Counter(
            "cybernetic_cloud_refused_envelopes",
            "Envelopes refused (bad signature, replay, stale, unknown key...), by reason",
            ["reason"],
            registry=registry,
        )
        self.events = Counter("cybernetic_cloud_events", "Gateway events stored", registry=registry)
        self.refused_readings = Counter(
            "cybernetic_cloud_refused_readings",
            "Readings of verified batches the store cannot represent (listed in the ack)",
            registry=registry,
        )
        self.nacks = Counter(
            "cybernetic_cloud_batch_nacks",
            "Authentic batches answered with a nack, by reason",
            ["reason"],
            registry=registry,
        )
        self.paused = False
        """True while a commit waits for disk space."""
        Gauge(
            "cybernetic_cloud_ingest_connected",
            "1 while cloud ingest is subscribed on the cloud broker",
            registry=registry,
        ).set_function(lambda: float(self.connected))

    @property
    def connected(self) -> bool:
        return self.session.connected

    async def run(self, ctx: ChildContext) -> None:
        inboxes: list[_Inbox] = []

        def direct() -> DirectCallback:
            # hooked up before connecting: a persistent session's queued batches arrive
            # right after CONNACK; what this connection leaves unacknowledged comes again
            inboxes[:] = [_Inbox()]
            return inboxes[0].on_message

        def subscribed() -> None:
            ctx.ready()
            log.info("cloud ingest subscribed")

        async def serve(link: Link) -> None:
            await self._commit_loop(link, inboxes[0])

        await self.session.run(serve, on_connected=subscribed, direct=direct)

    async def _commit_loop(self, link: Link, inbox: _Inbox) -> None:
        """Group commit: every batch that arrived during the last commit goes into the next
        one (one transaction, one fsync), then each gets its ack, then the broker its PUBACK."""
        while True:
            await inbox.wake.wait()
            inbox.wake.clear()
            items = inbox.take(GROUP_MAX)
            if inbox.items:
                inbox.wake.set()
            await self._commit(link, items)
            for _, _, mid, qos in items:
                if qos:
                    link.ack(mid, qos)

    def _open(self, topic: str, payload: bytes) -> _Opened | _Nack | None:
        gateway = (
            topics.gateway_of(self.prefix, topic, "telemetry")
            or topics.gateway_of(self.prefix, topic, "urgent")
            or ""
        )
        try:
            opened = self.links.open(gateway, payload, topic)
        except EnvelopeError as exc:
            self.refused.labels(exc.reason).inc()
            log.warning(
                "envelope refused", extra={"topic": topic, "reason": exc.reason, "error": str(exc)}
            )
            if isinstance(exc, StaleEnvelopeError | ReplayedEnvelopeError | MalformedPayloadError):
                return self._nack_for(gateway, payload, topic, exc)
            return None
        batch = opened.message
        if not isinstance(batch, TelemetryBatch) or batch.gateway != gateway:
            self.malformed.inc()
            log.warning("not a telemetry batch of this topic's gateway", extra={"topic": topic})
            return None
        return gateway, batch, opened.header

    def _nack_for(
        self, gateway: str, payload: bytes, topic: str, exc: EnvelopeError
    ) -> _Nack | None:
        """An answer for an authentic batch refused as stale or replayed (send it again,
        fresh: a replay is also what the broker's redelivery of a batch looks like when this
        process accepted its envelope and then failed before the commit) or as undecodable
        (never storable); None when the envelope is not authentic, or names no
        batch, so a forger learns nothing and costs one signature check."""
        verified = self.links.authentic(gateway, payload, topic)
        if verified is None or verified.header.kind != "telemetry.batch":
            return None
        try:
            ref = _BATCH_REF.decode(verified.payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        retry = not isinstance(exc, MalformedPayloadError)
        reason = exc.reason if retry else "malformed"
        return gateway, BatchNack(ref.batch_id, reason, retry, str(exc)[:300]), verified.header

    async def _commit(self, link: Link, items: list[_Item]) -> None:
        answers = [self._open(topic, payload) for topic, payload, _, _ in items]
        opened = [a for a in answers if a is not None and isinstance(a[1], TelemetryBatch)]
        nacks = [a for a in answers if a is not None and isinstance(a[1], BatchNack)]
        results = await self._store(opened) if opened else []
        replies = []
        for (gateway, batch, header), result in zip(opened, results, strict=True):
            if result is None:
                reply: BatchAck | BatchNack = BatchNack(batch.batch_id, "unstorable", retry=False)
                self.nacks.labels("unstorable").inc()
            elif result.replayed:
                # another worker (or this one, before a crash) already took this envelope:
                # the gateway sends the batch again in a fresh one, and its readings dedup
                reply = BatchNack(batch.batch_id, "replayed", retry=True)
                self.refused.labels("replayed").inc()
                self.nacks.labels("replayed").inc()
            else:
                reply = self._count(gateway, batch, result)
            replies.append(self._reply(link, gateway, reply, header))
        for gateway, nack, header in nacks:
            assert isinstance(nack, BatchNack)
            self.nacks.labels(nack.reason).inc()
            replies.append(self._reply(link, gateway, nack, header))
        await asyncio.gather(*replies)

    def _count(self, gateway: str, batch: TelemetryBatch, result: Stored) -> BatchAck:
        self.batches.inc()
        self.stored.inc(result.stored)
        self.duplicates.inc(result.duplicates)
        self.events.inc(result.events)
        if result.refused or result.refused_events:
            self.refused_readings.inc(len(result.refused))
            log.warning(
                "readings of a verified batch cannot be stored; the gateway dead-letters them",
                extra={
                    "gateway": gateway,
                    "refused": len(result.refused),
                    "refused_events": len(result.refused_events),
                    "first": next(iter((result.refused or result.refused_events).values())),
                },
            )
        return BatchAck(
            batch_id=batch.batch_id,
            stored=result.stored,
            duplicates=result.duplicates,
            refused=result.refused,
            refused_events=result.refused_events,
        )

    def _reply(self, link: Link, gateway: str, reply: BatchAck | BatchNack, header: Header) -> Any:
        topic = topics.ack(self.prefix, gateway)
        sealed = self.links.seal(gateway, reply, topic, derive(header))
        return link.publish(topic, sealed, qos=1)

    async def _store(self, opened: list[_Opened]) -> list[Stored | None]:
        """The group commit, waiting out a full disk (nothing acknowledged meanwhile). Should
        the group fail for another reason, each batch is tried alone, so one that cannot be
        stored (None: it is nacked) never holds back the others."""
        batches = [
            StoreBatch(gw, batch.readings, batch.events, Claim(h.key_id, h.nonce, h.ts_ms))
            for gw, batch, h in opened
        ]
        delay = 0.25
        while True:
            try:
                results: list[Stored | None] = list(
                    await self.store.store_many(batches, int(time.time() * 1000))
                )
            except StorageFullError as exc:
                if not self.paused:
                    self.paused = True
                    log.error(  # noqa: TRY400 - a state, not a bug: no traceback
                        "cloud store disk full: ingest paused", extra={"error": str(exc)}
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception as exc:
                if is_database_failure(exc) or isinstance(exc, StorageFailedError):
                    raise  # the store itself: its child fails and is reopened; nothing acked
                if len(batches) == 1:
                    log.exception(
                        "batch cannot be stored; nacked", extra={"gateway": batches[0].gateway}
                    )
                    return [None]
                results = []
                for one in opened:
                    results.extend(await self._store([one]))
            if self.paused:
                self.paused = False
                log.warning("cloud store disk has room again: ingest resumed")
            return results


class _BatchRef(msgspec.Struct, tag="telemetry.batch"):
    """Just the id of a batch, read from a payload that does not decode as a whole."""

    batch_id: str


_BATCH_REF = msgspec.msgpack.Decoder(_BatchRef)
_Opened = tuple[str, TelemetryBatch, Header]
_Nack = tuple[str, BatchNack, Header]


_Item = tuple[str, bytes, int, int]
"""topic, payload, mid, qos"""

GROUP_MAX = 64
"""At most this many gateway batches go into one transaction."""


class _Inbox:
    """One connection's received batches, as paho delivers them (on the event loop).

    Bounded by the broker: it sends no more than ``max_inflight_messages`` unacknowledged
    messages, and each is acknowledged only after its commit.
    """

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.wake = asyncio.Event()

    def on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        self.items.append((topic, payload, mid, qos))
        self.wake.set()

    def take(self, n: int) -> list[_Item]:
        items, self.items = self.items[:n], self.items[n:]
        return items
