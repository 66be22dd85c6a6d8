"""Cloud ingest: gateway batches from the cloud broker into the reading store, then the ack.

The subscription is a persistent session, so batches sent while the cloud process is down wait
in the broker. The application-level :class:`~amcp.wire.telemetry.BatchAck` is published only
after the store committed; a gateway deletes a batch only when it sees that ack. A malformed
batch is logged and counted, and never stops the loop.
"""

from __future__ import annotations

import logging
import time

import aiomqtt
from prometheus_client import CollectorRegistry, Counter, Gauge

from amcp.link import CloudLinks
from amcp.runtime.mqtt import Backoff, enable_manual_ack, make_client, pause_after_loss
from amcp.runtime.supervisor import ChildContext
from amcp.wire import EnvelopeError, derive
from amcp.wire.telemetry import BatchAck, TelemetryBatch
from cloud.config import CloudConfig
from cloud.readings import ReadingStore

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
            try:
                async with client:
                    await client.subscribe(f"{self.prefix}/+/telemetry", qos=1)
                    self.connected = True
                    backoff.reset()
                    ctx.ready()
                    log.info("cloud ingest subscribed")
                    async for message in client.messages:
                        await self._handle(client, message)
                        if message.qos:
                            paho.ack(message.mid, message.qos)
            except (aiomqtt.MqttError, ExceptionGroup) as caught:
                await pause_after_loss(caught, backoff, "cloud broker (ingest)")
            finally:
                self.connected = False

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        parts = topic.split("/")
        gateway = parts[-2] if len(parts) >= 2 else ""
        try:
            opened = self.links.open(gateway, message.payload, topic)
        except EnvelopeError as exc:
            self.refused.labels(exc.reason).inc()
            log.warning(
                "envelope refused", extra={"topic": topic, "reason": exc.reason, "error": str(exc)}
            )
            return
        batch = opened.message
        if not isinstance(batch, TelemetryBatch) or batch.gateway != gateway:
            self.malformed.inc()
            log.warning("not a telemetry batch of this topic's gateway", extra={"topic": topic})
            return
        stored, dups = await self.store.store(
            gateway, batch.readings, batch.events, int(time.time() * 1000)
        )
        self.batches.inc()
        self.stored.inc(stored)
        self.duplicates.inc(dups)
        self.events.inc(len(batch.events))
        ack = BatchAck(batch_id=batch.batch_id, stored=stored, duplicates=dups)
        ack_topic = f"{self.prefix}/{gateway}/ack"
        sealed = self.links.seal(gateway, ack, ack_topic, derive(opened.header))
        await client.publish(ack_topic, sealed, qos=1)
