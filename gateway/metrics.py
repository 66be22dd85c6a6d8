"""The gateway's Prometheus metrics, on a registry of its own.

Every name starts with ``cybernetic_`` and says what it counts; docs/operations.md lists them
all. Counters are incremented once per batch (never per reading on the hot path), and the
latency histograms are observed once per commit, acknowledged batch or intent; the outbox and
uplink gauges are read when Prometheus scrapes, from in-memory figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from amcp import __version__
from amcp.runtime.metrics import Readiness, condition, register_build_info
from amcp.runtime.session import CALLBACK_ERRORS
from gateway.outbox import OutboxStats

if TYPE_CHECKING:
    from amcp.wire.messages import IntentUpdate
    from amcp.wire.telemetry import Reading

COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0)
"""Ingest to commit: about 10 ms on a live stream; the long tail is a paused (full) disk."""
ROUND_TRIP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Batch sent to the cloud's ack: a LAN cloud answers in milliseconds, the ack timeout is 30 s."""
INTENT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Intent accepted to its final answer: device commands take from milliseconds to minutes."""


class _StateCollector(Collector):
    def __init__(
        self,
        stats: Callable[[], OutboxStats],
        uplink: Callable[[], tuple[bool, float]],
        ingest: Callable[[], bool],
    ) -> None:
        self._stats = stats
        self._uplink = uplink
        self._ingest = ingest

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        now_ms = time.time() * 1000
        yield GaugeMetricFamily(
            "cybernetic_outbox_rows",
            "Rows (readings and gateway events) waiting in the outbox",
            s.rows,
        )
        yield GaugeMetricFamily(
            "cybernetic_outbox_bytes", "Bytes of the rows waiting in the outbox", s.bytes
        )
        age = (now_ms - s.oldest_ms) / 1000 if s.oldest_ms is not None else 0.0
        yield GaugeMetricFamily(
            "cybernetic_outbox_oldest_age_seconds",
            "Age of the oldest outbox row not yet acknowledged by the cloud",
            age,
        )
        yield GaugeMetricFamily(
            "cybernetic_outbox_storage_full",
            "1 while the outbox's disk is full (ingest paused; the broker keeps the readings)",
            float(s.full),
        )
        yield GaugeMetricFamily(
            "cybernetic_uplink_batches_in_flight",
            "Batches sent and not yet acknowledged",
            s.open_batches,
        )
        yield GaugeMetricFamily(
            "cybernetic_ingest_connected",
            "1 while ingest is subscribed on the local broker",
            float(self._ingest()),
        )
        errors = CounterMetricFamily(
            "cybernetic_mqtt_callback_errors",
            "Exceptions caught at the MQTT callback guard, by kind (each is a bug to report)",
            labels=["kind"],
        )
        for kind, n in CALLBACK_ERRORS.items():
            errors.add_metric([kind], float(n))
        yield errors
        connected, lag = self._uplink()
        yield GaugeMetricFamily(
            "cybernetic_uplink_connected", "1 while the cloud link is up", float(connected)
        )
        yield GaugeMetricFamily(
            "cybernetic_uplink_lag_seconds",
            "For the last acknowledged batch, seconds from its oldest row entering the outbox "
            "to the cloud's acknowledgement",
            lag,
        )


class _EventsCollector(Collector):
    def __init__(self, dropped: Mapping[str, int], queued: Callable[[], int]) -> None:
        self._dropped = dropped
        self._queued = queued

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "cybernetic_events_queued",
            "Gateway events (S2, rules, policy flags) waiting to be written to the outbox",
            self._queued(),
        )
        dropped = CounterMetricFamily(
            "cybernetic_events_dropped",
            "Gateway events dropped before the outbox, by reason (queue_full: the queue was "
            "full; unwritable: the event could not be encoded)",
            labels=["reason"],
        )
        for reason in ("queue_full", "unwritable"):
            dropped.add_metric([reason], float(self._dropped.get(reason, 0)))
        yield dropped


class _PolicyCollector(Collector):
    def __init__(self, counts: Any) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "cybernetic_policy_decisions",
            "Readings by WASM ingest policy decision (allowed, flagged, denied, transformed); "
            "decision=faults counts the batches the policy agent failed on",
            labels=["decision"],
        )
        for name in ("allowed", "flagged", "denied", "transformed", "faults"):
            family.add_metric([name], float(getattr(self._counts, name, 0)))
        yield family


class GatewayMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, version: str = __version__
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "cybernetic_ingest_messages",
            "Telemetry messages received from the local broker (stored or refused)",
            registry=r,
        )
        self.stored = Counter(
            "cybernetic_ingest_stored_readings", "Readings committed to the outbox", registry=r
        )
        self.rejected = Counter(
            "cybernetic_ingest_rejected", "Payloads refused, by reason", ["reason"], registry=r
        )
        self.redelivered = Counter(
            "cybernetic_ingest_redelivered_readings",
            "Readings the broker redelivered after a crash that were stored before it",
            registry=r,
        )
        self.failures = Counter(
            "cybernetic_ingest_failures",
            "Unexpected errors that refused a reading (logged once per kind), by step",
            ["step"],
            registry=r,
        )
        self.dropped = Counter(
            "cybernetic_outbox_dropped_readings",
            "Readings dropped by the outbox, by reason",
            ["reason"],
            registry=r,
        )
        self.dropped_events = Counter(
            "cybernetic_outbox_dropped_events",
            "Gateway events (S2, rules) dropped by the outbox, by reason",
            ["reason"],
            registry=r,
        )
        self.batches_sent = Counter(
            "cybernetic_uplink_batches_sent",
            "Batches published to the cloud (a re-sent batch counts again)",
            registry=r,
        )
        self.refused = Counter(
            "cybernetic_link_refused_envelopes",
            "Envelopes from the cloud refused, by reason",
            ["reason"],
            registry=r,
        )
        self.cloud_refused = Counter(
            "cybernetic_uplink_cloud_refused_rows",
            "Rows the cloud could not store (moved to the dead-letter table)",
            registry=r,
        )
        self.acked = Counter(
            "cybernetic_uplink_acked_rows",
            "Outbox rows (readings and gateway events together) deleted after the cloud "
            "acknowledged their batch; rows it refused are counted here too (and in "
            "cybernetic_uplink_cloud_refused_rows_total)",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "cybernetic_ingest_commit_latency_seconds",
            "Seconds from ingest receiving a message to its reading's commit to the outbox; "
            "one observation per commit, of its oldest reading (the commit's worst case)",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.round_trip_seconds = Histogram(
            "cybernetic_uplink_round_trip_seconds",
            "Seconds from publishing a batch to the cloud to the cloud's acknowledgement of "
            "its commit; one observation per acknowledged batch, from its last sending",
            buckets=ROUND_TRIP_BUCKETS,
            registry=r,
        )
        self.intent_seconds = Histogram(
            "cybernetic_intent_duration_seconds",
            "Seconds from the gateway accepting an intent to its final answer, by outcome "
            "(done, or the failure code: timeout, cancelled, refused, device, ...)",
            ["outcome"],
            buckets=INTENT_BUCKETS,
            registry=r,
        )
        self.build_info = register_build_info(r, "gateway", version)

    def observe_commit(self, readings: Sequence[Reading], now_ms: int) -> None:
        """Ingest, after a commit: its latency, from the oldest reading's ``received_ms``."""
        if readings:
            oldest = min(r.received_ms for r in readings)
            self.commit_seconds.observe(max(0.0, (now_ms - oldest) / 1000))

    def observe_intent(self, seconds: float, final: IntentUpdate) -> None:
        """S1, when an intent has its final answer (``done`` or ``failed``)."""
        outcome = "done" if final.state == "done" else (final.code or "error")
        self.intent_seconds.labels(outcome).observe(max(0.0, seconds))

    def count_drop(self, kind: str, reason: str, n: int) -> None:
        """The outbox's ``on_drop``: readings and events are counted apart."""
        (self.dropped if kind == "reading" else self.dropped_events).labels(reason).inc(n)

    def watch_events(self, dropped: Mapping[str, int], queued: Callable[[], int]) -> None:
        """Export the event writer's queue and drops (gateway.events.EventWriter)."""
        self.registry.register(_EventsCollector(dropped, queued))

    def watch_policy(self, counts: Any) -> None:
        """Export a policy stage's running totals (wasm.stage.StageCounts)."""
        self.registry.register(_PolicyCollector(counts))

    def watch(
        self,
        stats: Callable[[], OutboxStats],
        uplink: Callable[[], tuple[bool, float]],
        ingest: Callable[[], bool] = lambda: False,
    ) -> None:
        self.registry.register(_StateCollector(stats, uplink, ingest))


def gateway_readiness(
    stats: Callable[[], OutboxStats], ingest_connected: Callable[[], bool]
) -> Readiness:
    """The gateway's ``/readyz`` checks: it is ready when it can take telemetry in, i.e.
    ingest is subscribed on the local broker and the outbox's disk has room. The cloud link
    is not a check: a gateway without its cloud keeps working (it is the product's promise),
    its state is in ``cybernetic_uplink_connected``."""

    def outbox() -> tuple[bool, str]:
        s = stats()
        if s.full:
            return False, "disk full: ingest paused, the broker keeps the readings"
        return True, f"{s.rows} rows waiting"

    ingest = condition(
        ingest_connected, "subscribed on the local broker", "not subscribed on the local broker"
    )
    return Readiness({"ingest": ingest, "outbox": outbox})
