"""Uplink: outbox batches to the cloud, deleted only after the cloud's own commit.

The cloud answers every batch with a :class:`~amcp.wire.telemetry.BatchAck` on
``{prefix}/{gateway}/ack`` after it committed the readings; a PUBACK alone proves nothing.
Up to ``window`` batches are in flight at once, so a backlog drains at full speed; a batch not
acknowledged within ``ack_timeout`` is sent again with the same batch id (the cloud drops the
duplicate readings and acknowledges again). After a reconnect every open batch is re-sent.

The cloud may answer with a :class:`~amcp.wire.telemetry.BatchNack` instead: ``retry`` (the
batch arrived stale, e.g. queued while the cloud was down) sends it again at once in a fresh
envelope rather than waiting out ``ack_timeout``; otherwise the batch can never be stored and
its rows move to the dead-letter table. Rows an ack lists as refused are dead-lettered too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import msgspec

from amcp.link import GatewayLink
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import Link, Session, SessionSpec, Transport
from amcp.runtime.storage import StorageFullError
from amcp.runtime.supervisor import ChildContext
from amcp.wire import EnvelopeError, topics
from amcp.wire.telemetry import BatchAck, BatchNack
from gateway.config import UplinkSettings
from gateway.metrics import GatewayMetrics
from gateway.outbox import Batch, Outbox
from gateway.urgent import UrgentLane

log = logging.getLogger(__name__)


class _WireBatch(msgspec.Struct, frozen=True, tag="telemetry.batch", omit_defaults=True):
    """Encodes exactly as :class:`~amcp.wire.telemetry.TelemetryBatch`, from stored bytes
    (no decode and re-encode of every reading on the way out)."""

    batch_id: str
    gateway: str
    readings: list[msgspec.Raw]
    events: list[msgspec.Raw] = msgspec.field(default_factory=list)


IDLE_RECHECK_S = 1.0
"""An idle uplink looks at the outbox at least this often, whatever it was told."""
NACK_RESEND_S = 1.0
"""A batch the cloud asks for again is re-sent at most this often (a clock far off the
cloud's would otherwise make every fresh envelope stale at once, in a tight loop)."""


@dataclass
class _InFlight:
    batch: Batch
    sent_at: float
    renacked: bool = False
    """Re-sent once on a nack already (later ones wait :data:`NACK_RESEND_S`)."""


class Uplink:
    def __init__(
        self,
        settings: UplinkSettings,
        outbox: Outbox,
        metrics: GatewayMetrics,
        link: GatewayLink,
        *,
        gateway: str,
        urgent: UrgentLane | None = None,
        transport: Transport | None = None,
    ) -> None:
        """``urgent``: the urgent lane, sent before any outbox batch (gateway.urgent)."""
        self.settings = settings
        self.urgent = urgent
        self._urgent_sent: dict[str, float] = {}
        """Urgent batch id → when it was last sent."""
        self.outbox = outbox
        self.metrics = metrics
        self.gateway = gateway
        self.link = link
        self.session = Session(
            transport or MqttTransport(),
            settings.broker,
            SessionSpec(f"{gateway}-uplink", (topics.ack(settings.topic_prefix, gateway),)),
            name="uplink",
        )
        self.lag_s = 0.0
        self._inflight: dict[str, _InFlight] = {}
        self._slot = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.session.connected

    LIVE = ("batch_max", "batch_interval", "window", "ack_timeout")
    """What :meth:`apply` changes at once; the rest of ``[uplink]`` needs a restart."""

    def apply(self, settings: UplinkSettings) -> list[str]:
        """Reload: batching, the window and the ack timeout take effect at once; returns the
        names of changed fields that need a restart (they keep their running values)."""
        live = {f: getattr(settings, f) for f in self.LIVE}
        later = [
            f
            for f in settings.__struct_fields__
            if f not in self.LIVE and getattr(settings, f) != getattr(self.settings, f)
        ]
        self.settings = msgspec.structs.replace(self.settings, **live)
        self._slot.set()  # a wider window has room now
        return later

    def status(self) -> tuple[bool, float]:
        return self.connected, self.lag_s

    def seal(self, batch: Batch, topic: str) -> bytes:
        """The batch in a fresh envelope: made now, at sending time, even for old readings."""
        wire = _WireBatch(
            batch.batch_id,
            self.gateway,
            [msgspec.Raw(b) for b in batch.bodies],
            [msgspec.Raw(b) for b in batch.events],
        )
        return self.link.seal(wire, topic)  # type: ignore[arg-type]

    async def run(self, ctx: ChildContext) -> None:
        broker = self.settings.broker

        def connected() -> None:
            ctx.ready()
            log.info("uplink connected", extra={"host": broker.host, "port": broker.port})

        await self.session.run(self._session, on_connected=connected)

    async def _session(self, client: Link) -> None:
        self._inflight.clear()
        self._urgent_sent.clear()
        await self._send_urgent(client, again=True)  # ahead of everything, resends included
        for batch in await self.outbox.open_batches():
            await self._send(client, batch)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._receive_acks(client), name="uplink-acks")
            tg.create_task(self._send_loop(client), name="uplink-send")
            tg.create_task(self._resend_stale(client), name="uplink-resend")

    async def _send(self, client: Link, batch: Batch) -> None:
        await self._send_all(client, [batch])

    async def _send_all(self, client: Link, batches: list[Batch]) -> None:
        """Publish batches together: each waits for its PUBACK, none for another's."""
        topic = topics.telemetry(self.settings.topic_prefix, self.gateway)
        publishes = []
        for batch in batches:
            if batch.empty:  # every row was dropped by the overflow policy: nothing to send
                await self.outbox.ack(batch.batch_id)
                continue
            self._inflight[batch.batch_id] = _InFlight(batch, time.monotonic())
            publishes.append(client.publish(topic, self.seal(batch, topic), qos=1))
        await asyncio.gather(*publishes)
        self.metrics.batches_sent.inc(len(publishes))

    async def _send_urgent(self, client: Link, *, again: bool = False) -> None:
        """Send the urgent lane's rows not in flight (and, with ``again``, those in flight)."""
        lane = self.urgent
        if lane is None:
            return
        topic = topics.urgent(self.settings.topic_prefix, self.gateway)
        batches = lane.open_batches() if again else []
        while (batch := await lane.next_batch()) is not None:
            batches.append(batch)
        for batch in batches:
            wire = _WireBatch(
                batch.batch_id, self.gateway, [], [msgspec.Raw(b) for b in batch.events]
            )
            self._urgent_sent[batch.batch_id] = time.monotonic()
            await client.publish(topic, self.link.seal(wire, topic), qos=1)  # type: ignore[arg-type]
        if batches:
            self.metrics.batches_sent.inc(len(batches))

    async def _send_loop(self, client: Link) -> None:
        s = self.settings
        outbox = self.outbox
        while True:
            if self.urgent is not None and self.urgent.appended.is_set():
                self.urgent.appended.clear()
                await self._send_urgent(client)
            room = s.window - len(self._inflight)
            if room <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            if self._inflight and outbox.unbatched < s.batch_max:
                # Ack-clocked batching: with batches in flight and no full batch waiting, wait
                # for an ack (or at most batch_interval) so a live stream travels in a few
                # fuller batches rather than many tiny ones the cloud must each commit. A
                # backlog never waits: its batches go out as fast as the window allows.
                self._slot.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot.wait(), s.batch_interval)
                room = s.window - len(self._inflight)
                if room <= 0:
                    continue
            # clear before looking: an append that lands while we look sets it again, so
            # its rows are never left waiting for the next reading to arrive
            outbox.appended.clear()
            batches = await outbox.next_batches(s.batch_max, room)
            if not batches:
                await self._idle()
                if s.batch_interval:  # let a batch fill up a little when traffic is light
                    await asyncio.sleep(s.batch_interval)
                continue
            await self._send_all(client, batches)

    async def _idle(self) -> None:
        """Wait for rows in the outbox or the urgent lane, at most :data:`IDLE_RECHECK_S`."""
        events = [self.outbox.appended] + ([self.urgent.appended] if self.urgent else [])
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, timeout=IDLE_RECHECK_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _receive_acks(self, client: Link) -> None:
        async for message in client.messages():
            topic = message.topic
            try:
                reply = self.link.open(message.payload, topic).message
            except EnvelopeError as exc:
                self.metrics.refused.labels(exc.reason).inc()
                log.warning(
                    "envelope from cloud refused", extra={"reason": exc.reason, "error": str(exc)}
                )
                continue
            try:
                if isinstance(reply, BatchAck):
                    await self._on_ack(reply)
                elif isinstance(reply, BatchNack):
                    await self._on_nack(client, reply)
                else:
                    log.warning("unexpected message on the ack topic", extra={"topic": topic})
            except StorageFullError as exc:
                # the rows stay, the batch stays open: it is sent again and its next ack
                # deletes it once there is room
                log.warning("outbox disk full; acknowledged rows kept", extra={"error": str(exc)})

    async def _on_ack(self, ack: BatchAck) -> None:
        if self.urgent is not None and self.urgent.owns(ack.batch_id):
            self._urgent_sent.pop(ack.batch_id, None)
            self.metrics.acked.inc(await self.urgent.ack(ack.batch_id))
            return
        n = await self.outbox.ack(ack.batch_id, ack.refused, ack.refused_events)
        entry = self._inflight.pop(ack.batch_id, None)
        if n:
            self.metrics.acked.inc(n)
        if ack.refused or ack.refused_events:
            self.metrics.cloud_refused.inc(len(ack.refused) + len(ack.refused_events))
            log.warning(
                "the cloud refused rows of a batch; they are in the dead-letter table",
                extra={"batch_id": ack.batch_id, "rows": len(ack.refused)},
            )
        if entry is not None:
            self.lag_s = max(0.0, time.time() - entry.batch.oldest_ms / 1000)
            self.metrics.round_trip_seconds.observe(time.monotonic() - entry.sent_at)
        self._slot.set()

    async def _on_nack(self, client: Link, nack: BatchNack) -> None:
        if self.urgent is not None and self.urgent.owns(nack.batch_id):
            if nack.retry:  # sent again with the next urgent round, fresh
                self._urgent_sent[nack.batch_id] = 0.0
                return
            log.error(  # never storable: nothing else could take it either
                "the cloud can never store an urgent batch; dropped",
                extra={"batch_id": nack.batch_id, "reason": nack.reason},
            )
            self._urgent_sent.pop(nack.batch_id, None)
            await self.urgent.ack(nack.batch_id)
            return
        entry = self._inflight.get(nack.batch_id)
        if entry is None:
            return  # not ours any more (acknowledged, or a replayed old nack)
        if nack.retry:
            if time.monotonic() - entry.sent_at >= NACK_RESEND_S or not entry.renacked:
                entry.renacked = True
                log.info(
                    "the cloud asks for a batch again; re-sending it fresh",
                    extra={"batch_id": nack.batch_id, "reason": nack.reason},
                )
                await self._send(client, entry.batch)
            return
        n = await self.outbox.refuse(nack.batch_id, nack.reason)
        self._inflight.pop(nack.batch_id, None)
        self.metrics.cloud_refused.inc(n)
        log.error(
            "the cloud can never store a batch; its rows are in the dead-letter table",
            extra={"batch_id": nack.batch_id, "reason": nack.reason, "detail": nack.detail},
        )
        self._slot.set()

    async def _resend_stale(self, client: Link) -> None:
        timeout = self.settings.ack_timeout
        while True:
            await asyncio.sleep(timeout / 4)
            now = time.monotonic()
            if any(now - sent > timeout for sent in self._urgent_sent.values()):
                await self._send_urgent(client, again=True)
            for entry in list(self._inflight.values()):
                if now - entry.sent_at > timeout:
                    log.info(
                        "batch not acknowledged in time; sending again",
                        extra={"batch_id": entry.batch.batch_id},
                    )
                    await self._send(client, entry.batch)
