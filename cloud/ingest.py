"""Cloud ingest: gateway batches from the cloud broker into the reading store, then the ack.

The subscription is a persistent session, so batches sent while the cloud process is down wait
in the broker. The application-level :class:`~amcp.wire.telemetry.BatchAck` is published only
after the store committed; a gateway deletes a batch only when it sees that ack. Batches that
arrive while a commit runs go into the next one together (group commit: one fsync for many
gateways' batches). A malformed batch is logged and counted, and never stops the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiomqtt
from prometheus_client import CollectorRegistry, Counter, Gauge

from amcp.link import CloudLinks
from amcp.runtime.mqtt import (
    Backoff,
    enable_manual_ack,
    make_client,
    on_message_direct,
    pause_after_loss,
    wait_disconnected,
)
from amcp.runtime.supervisor import ChildContext
from amcp.wire import EnvelopeError, Header, derive
from amcp.wire.telemetry import BatchAck, TelemetryBatch
from cloud.config import CloudConfig
from cloud.readings import ReadingStore, StoreBatch

log = logging.getLogger(__name__)


class CloudIngest:
    def __init__(
        self,
        config: CloudConfig,
        store: ReadingStore,
        registry: CollectorRegistry,
        links: CloudLinks,
    ) -> None:
        self.config = config
        self.store = store
        self.links = links
        self.prefix = config.ingest.topic_prefix
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
        self.connected = False
        Gauge(
            "cybernetic_cloud_ingest_connected",
            "1 while cloud ingest is subscribed on the cloud broker",
            registry=registry,
        ).set_function(lambda: float(self.connected))

    async def run(self, ctx: ChildContext) -> None:
        link = self.config.broker
        backoff = Backoff(link.reconnect_initial, link.reconnect_max)
        client = make_client(link, self.config.ingest.session, clean_session=False)
        paho = enable_manual_ack(client)
        while True:
            # hooked up before connecting: a persistent session's queued batches arrive right
            # after CONNACK; what this connection leaves unacknowledged comes again
            inbox = _Inbox()
            on_message_direct(client, inbox.on_message)
            try:
                async with client:
                    await client.subscribe(f"{self.prefix}/+/telemetry", qos=1)
                    self.connected = True
                    backoff.reset()
                    ctx.ready()
                    log.info("cloud ingest subscribed")
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._commit_loop(client, paho, inbox), name="cloud-commit")
                        tg.create_task(wait_disconnected(client), name="cloud-ingest-link")
            except (aiomqtt.MqttError, ExceptionGroup) as caught:
                await pause_after_loss(caught, backoff, "cloud broker (ingest)")
            finally:
                self.connected = False

    async def _commit_loop(self, client: aiomqtt.Client, paho: Any, inbox: _Inbox) -> None:
        """Group commit: every batch that arrived during the last commit goes into the next
        one (one transaction, one fsync), then each gets its ack, then the broker its PUBACK."""
        while True:
            await inbox.wake.wait()
            inbox.wake.clear()
            items = inbox.take(GROUP_MAX)
            if inbox.items:
                inbox.wake.set()
            await self._commit(client, items)
            for _, _, mid, qos in items:
                if qos:
                    paho.ack(mid, qos)

    def _open(self, topic: str, payload: bytes) -> tuple[str, TelemetryBatch, Header] | None:
        parts = topic.split("/")
        gateway = parts[-2] if len(parts) >= 2 else ""
        try:
            opened = self.links.open(gateway, payload, topic)
        except EnvelopeError as exc:
            self.refused.labels(exc.reason).inc()
            log.warning(
                "envelope refused", extra={"topic": topic, "reason": exc.reason, "error": str(exc)}
            )
            return None
        batch = opened.message
        if not isinstance(batch, TelemetryBatch) or batch.gateway != gateway:
            self.malformed.inc()
            log.warning("not a telemetry batch of this topic's gateway", extra={"topic": topic})
            return None
        return gateway, batch, opened.header

    async def _commit(self, client: aiomqtt.Client, items: list[_Item]) -> None:
        opened = [o for o in (self._open(topic, payload) for topic, payload, _, _ in items) if o]
        if not opened:
            return
        results = await self.store.store_many(
            [StoreBatch(gateway, batch.readings, batch.events) for gateway, batch, _ in opened],
            int(time.time() * 1000),
        )
        acks = []
        for (gateway, batch, header), (stored, dups) in zip(opened, results, strict=True):
            self.batches.inc()
            self.stored.inc(stored)
            self.duplicates.inc(dups)
            self.events.inc(len(batch.events))
            ack = BatchAck(batch_id=batch.batch_id, stored=stored, duplicates=dups)
            ack_topic = f"{self.prefix}/{gateway}/ack"
            sealed = self.links.seal(gateway, ack, ack_topic, derive(header))
            acks.append(client.publish(ack_topic, sealed, qos=1))
        await asyncio.gather(*acks)


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
