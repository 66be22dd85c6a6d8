"""Ingest: device telemetry from the local broker into the outbox, acknowledged after commit.

The subscription is a persistent MQTT session (clean_session false), so readings published
while the gateway is down wait in the broker. Each QoS 1 message is acknowledged to the broker
only after its reading is committed to the outbox: a crash before the commit means the broker
delivers it again. Backpressure needs no queue of our own: the broker stops sending once
``max_inflight_messages`` are unacknowledged, which bounds memory.

One rule at this boundary: every message is either stored or dead-lettered with its reason,
and then acknowledged. Anything raised while turning a payload into a stored reading (decoding,
validation, a stage, encoding for the outbox) refuses that one message (see
:mod:`gateway.decode` for the reasons); it never stops ingest and never affects other messages.
A full disk is not a refusal: ingest pauses with the batch in hand (unacknowledged, so the
broker keeps everything behind it), reports it, and commits it once space returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec

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
from amcp.wire.telemetry import Reading
from gateway.config import IngestSettings
from gateway.decode import PayloadError, UnknownDeviceError, decode_payload
from gateway.hooks import IngestFilter, IngestObserver
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox, encode_row

log = logging.getLogger(__name__)
T = TypeVar("T")


REDELIVERY_CHECKS = 64
"""Commits after a start during which readings are checked against the outbox's last
committed identities (the broker redelivers what was unacknowledged first thing)."""


Rejected = tuple[str, str, str, bytes]
"""(device, reason, detail, payload): one dead letter."""

MAX_DEVICE_NAME = 128
"""Longest device id taken from a topic (longer ones are refused as unknown devices)."""

STORAGE_RETRY_S = (0.25, 5.0)
"""While the disk is full, a paused commit is tried again after this backoff (min, max)."""


class TooManyDevicesError(UnknownDeviceError):
    reason = "too_many_devices"


@dataclass
class _Pending:
    readings: list[Reading] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)


class _Session:
    """One connection's batching: messages as paho delivers them, commits in order, then acks.

    Batches fill while the previous one commits (the broker keeps sending up to its in-flight
    window), so a commit's fsync never stalls the stream. Everything here belongs to one
    connection: after a reconnect the broker redelivers what was not acknowledged.
    """

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.ready: deque[_Pending] = deque()
        self.pending = _Pending()
        self.wake = asyncio.Event()
        self.batch_max = ingest.settings.batch_max

    def on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        pending = self.pending
        self.ingest.accept(pending, topic, payload)
        if qos:
            pending.acks.append((mid, qos))
        if len(pending.readings) + len(pending.rejected) >= self.batch_max:
            self.ready.append(pending)
            self.pending = _Pending()
        self.wake.set()

    def _has_pending(self) -> bool:
        p = self.pending
        return bool(p.acks or p.readings or p.rejected)

    async def commit_loop(self, link: Link) -> None:
        ingest = self.ingest
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not self.ready:  # a partial batch: give it a moment to fill
                await asyncio.sleep(ingest.settings.batch_interval)
                if self._has_pending():
                    self.ready.append(self.pending)
                    self.pending = _Pending()
            while self.ready:
                batch = self.ready.popleft()
                await ingest.commit(batch)
                for mid, qos in batch.acks:  # only now may the broker forget them
                    link.ack(mid, qos)
            if self._has_pending():  # what arrived meanwhile must not wait for a next message
                self.wake.set()


class Ingest:
    def __init__(
        self,
        settings: IngestSettings,
        outbox: Outbox,
        metrics: GatewayMetrics,
        *,
        broker: BrokerLink,
        client_id: str,
        stages: Sequence[IngestFilter] = (),
        observers: Sequence[IngestObserver] = (),
        transport: Transport | None = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.settings = settings
        # a persistent session (queued readings wait in the broker while the gateway is
        # down), acknowledged by hand after each commit
        self.session = Session(
            transport or MqttTransport(),
            broker,
            SessionSpec(client_id, (settings.topic,), clean_session=False, manual_ack=True),
            name="ingest",
        )
        self.outbox = outbox
        self.metrics = metrics
        self.stages = list(stages)
        """Filters, before the commit (gateway.hooks)."""
        self.observers = list(observers)
        """Observers, after the commit, of exactly the readings stored (gateway.hooks)."""
        self._redelivery_checks = REDELIVERY_CHECKS
        self._recent: set[tuple[str, str, int]] = set()
        self._now_ms = now_ms
        self._allowed = frozenset(self.settings.devices)
        self._known: set[str] = set()
        """Devices auto-registered since start (at most ``max_devices``)."""
        # readings without a seq are numbered by the gateway under a boot id of its own,
        # new for every gateway start (see docs/telemetry.md, "Reading identity")
        self.boot_id = "gw-" + uuid.uuid4().hex[:12]
        self._seq: dict[str, int] = {}
        self._failures_logged: set[str] = set()
        self.paused = False
        """True while a commit waits for disk space (ingest takes nothing new meanwhile)."""
        self._prefix, self._suffix = self._topic_shape(self.settings.topic)
        self.backlog = 0
        """Messages received and not yet committed (an S2 load signal)."""

    @property
    def connected(self) -> bool:
        return self.session.connected

    def expect_redelivery(self) -> None:
        """A new connection: for its first commits, readings the outbox committed lately are
        acknowledged again instead of stored again (their PUBACK may have been lost)."""
        self._recent = self.outbox.recent_identities()
        self._redelivery_checks = REDELIVERY_CHECKS

    def pending(self) -> int:
        """Messages received and not yet committed (an S2 load signal)."""
        return self.backlog

    def apply(self, settings: IngestSettings) -> None:
        """Reload: the allow-list, auto-registration, limits and batching take effect at once
        (batch sizes from the next connection); a changed topic needs a restart."""
        if settings.topic != self.settings.topic:
            log.warning(
                "[ingest] topic changed: takes effect at the next restart",
                extra={"topic": settings.topic},
            )
            settings = msgspec.structs.replace(settings, topic=self.settings.topic)
        self.settings = settings
        self._allowed = frozenset(settings.devices)

    @staticmethod
    def _topic_shape(topic: str) -> tuple[str, str]:
        head, plus, tail = topic.partition("+")
        if not plus or "+" in tail or "#" in topic:
            raise ValueError(f"ingest topic must have exactly one '+' for the device: {topic!r}")
        return head, tail

    # -- decoding -------------------------------------------------------------------------
    def device_of(self, topic: str) -> str | None:
        if not (topic.startswith(self._prefix) and topic.endswith(self._suffix)):
            return None
        device = topic[len(self._prefix) : len(topic) - len(self._suffix)]
        return device or None

    def _admit_device(self, device: str) -> None:
        if self._allowed:
            if device not in self._allowed:
                raise UnknownDeviceError(f"device {device!r} is not in the allow-list")
            return
        if not self.settings.auto_register:
            raise UnknownDeviceError(f"device {device!r} is not registered")
        if device not in self._known:
            if len(self._known) >= self.settings.max_devices:
                raise TooManyDevicesError(
                    f"device {device!r} refused: {len(self._known)} devices are registered "
                    f"already ([ingest] max_devices)"
                )
            self._known.add(device)

    def to_reading(self, topic: str, payload: bytes) -> Reading:
        device = self.device_of(topic)
        if device is None:
            raise UnknownDeviceError(f"topic {topic[:200]!r} names no device")
        if len(device) > MAX_DEVICE_NAME:
            raise UnknownDeviceError(f"device id longer than {MAX_DEVICE_NAME} characters")
        # the payload first: a refused payload must not register its device
        p = decode_payload(
            payload, max_bytes=self.settings.max_payload_bytes, max_fields=self.settings.max_fields
        )
        self._admit_device(device)
        now = self._now_ms()
        if p.seq is None:
            seq = self._seq.get(device, 0) + 1
            self._seq[device] = seq
            boot = self.boot_id
        else:
            seq, boot = p.seq, p.boot or "-"
        return Reading(device, boot, seq, p.ts_ms or now, p.values, now)

    def accept(self, pending: _Pending, topic: str, payload: bytes) -> None:
        self.backlog += 1
        try:
            pending.readings.append(self.to_reading(topic, payload))
        except PayloadError as exc:
            pending.rejected.append((self._device_label(topic), exc.reason, str(exc), payload))
        except Exception as exc:  # anything else is a refusal of this message too, never a crash
            self._log_failure("decode", exc)
            pending.rejected.append(
                (self._device_label(topic), "unprocessable", _describe(exc), payload)
            )

    def _device_label(self, topic: str) -> str:
        device = self.device_of(topic) or "?"
        return device if len(device) <= MAX_DEVICE_NAME else device[:MAX_DEVICE_NAME] + "..."

    def _log_failure(self, where: str, exc: BaseException) -> None:
        """Log an unexpected failure with its traceback once per kind; count it always."""
        kind = f"{where}:{type(exc).__name__}"
        self.metrics.failures.labels(where).inc()
        if kind not in self._failures_logged and len(self._failures_logged) < 100:
            self._failures_logged.add(kind)
            log.error(
                "reading refused by an unexpected error (logged once per kind)",
                exc_info=exc,
                extra={"where": where},
            )

    # -- running --------------------------------------------------------------------------
    async def run(self, ctx: ChildContext) -> None:
        batching: list[_Session] = []

        def direct() -> DirectCallback:
            # a fresh batching state per connection, hooked up before connecting: a
            # persistent session's queued messages arrive right after CONNACK
            batching[:] = [_Session(self)]
            self.backlog = 0  # what the last connection left uncommitted comes again
            self.expect_redelivery()
            return batching[0].on_message

        def subscribed() -> None:
            ctx.ready()
            log.info("ingest subscribed", extra={"topic": self.settings.topic})

        async def serve(link: Link) -> None:
            await batching[0].commit_loop(link)

        await self.session.run(serve, on_connected=subscribed, direct=direct)

    async def commit(self, batch: _Pending) -> None:
        m = self.metrics
        m.received.inc(len(batch.readings) + len(batch.rejected))
        rejected = list(batch.rejected)
        readings = self._skip_redelivered(batch.readings)
        readings = self._run_stages(readings, rejected)
        readings, bodies = self._encode(readings, rejected)
        if bodies:
            # readings the gateway numbered get a new seq on redelivery: nothing to recognise
            identities = [(r.device, r.boot, r.seq) for r in readings if r.boot != self.boot_id]
            kept = await self._while_full(lambda: self.outbox.append_readings(bodies, identities))
            m.stored.inc(len(kept))
            stored = readings if len(kept) == len(readings) else [readings[i] for i in kept]
            m.observe_commit(stored, self._now_ms())
            self._observe(stored)
        if rejected:
            for _, reason, detail, _ in rejected:
                m.rejected.labels(reason).inc()
                log.info("payload refused", extra={"reason": reason, "detail": detail[:200]})
            await self._while_full(lambda: self.outbox.dead_letter(rejected))
        self.backlog -= len(batch.readings) + len(batch.rejected)

    def _run_stages(self, readings: list[Reading], rejected: list[Rejected]) -> list[Reading]:
        """Each stage on the whole batch; one that raises is run again reading by reading, so
        only the readings it fails on are refused."""
        for stage in self.stages:
            try:
                readings = stage(readings)
            except Exception as exc:
                self._log_failure("stage", exc)
                kept: list[Reading] = []
                for reading in readings:
                    try:
                        kept.extend(stage([reading]))
                    except Exception as one:
                        rejected.append(_refusal(reading, "unprocessable", _describe(one)))
                readings = kept
        return readings

    def _skip_redelivered(self, readings: list[Reading]) -> list[Reading]:
        """Readings the broker redelivers after a crash or a lost connection that were
        committed before it (the PUBACK was lost with the process or the link) are
        acknowledged again, not stored or observed again. Readings the gateway numbered
        itself carry a new seq and are not recognised (at-least-once for devices that send
        no seq, docs/telemetry.md)."""
        recent = self._recent
        if not recent:
            return readings
        self._redelivery_checks -= 1
        if self._redelivery_checks <= 0:
            self._recent = set()
        fresh = [r for r in readings if (r.device, r.boot, r.seq) not in recent]
        if len(fresh) < len(readings):
            self.metrics.redelivered.inc(len(readings) - len(fresh))
        return fresh

    def _observe(self, stored: list[Reading]) -> None:
        for observer in self.observers:
            try:
                observer(stored)
            except Exception as exc:  # stored already: an observer's bug costs only itself
                self._log_failure("observer", exc)

    def _encode(
        self, readings: list[Reading], rejected: list[Rejected]
    ) -> tuple[list[Reading], list[bytes]]:
        """The readings that encode, and their bodies (a value a stage produced that the
        outbox cannot store refuses that reading alone)."""
        try:
            return readings, [encode_row(r) for r in readings]
        except Exception:
            kept: list[Reading] = []
            bodies: list[bytes] = []
            for reading in readings:
                try:
                    bodies.append(encode_row(reading))
                except Exception as exc:
                    self._log_failure("encode", exc)
                    rejected.append(_refusal(reading, "unstorable", _describe(exc)))
                else:
                    kept.append(reading)
            return kept, bodies

    async def _while_full(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run an outbox write, waiting out a full disk: nothing is acknowledged meanwhile,
        so the broker holds this batch and everything behind it."""
        delay = STORAGE_RETRY_S[0]
        while True:
            try:
                result = await write()
            except StorageFullError as exc:
                if not self.paused:
                    self.paused = True
                    log.error(  # noqa: TRY400 - a state, not a bug: no traceback
                        "outbox disk full: ingest paused, the broker keeps the readings",
                        extra={"error": str(exc), "path": str(self.outbox.path)},
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORAGE_RETRY_S[1])
                continue
            if self.paused:
                self.paused = False
                log.warning("outbox disk has room again: ingest resumed")
            return result


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _refusal(reading: Reading, reason: str, detail: str) -> Rejected:
    """A dead letter for a reading that was decoded (its raw payload is gone by then)."""
    return (reading.device, reason, detail, repr(reading)[:4096].encode())
