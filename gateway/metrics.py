"""The gateway's Prometheus metrics, on a registry of its own.

Counters are incremented once per batch (never per reading on the hot path); the outbox and
uplink gauges are read when Prometheus scrapes, from in-memory figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from amcp.runtime.mqtt import CALLBACK_ERRORS
from gateway.outbox import OutboxStats


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
        yield GaugeMetricFamily("cybernetic_outbox_rows", "Readings waiting in the outbox", s.rows)
        yield GaugeMetricFamily(
            "cybernetic_outbox_bytes", "Bytes of readings in the outbox", s.bytes
        )
        age = (now_ms - s.oldest_ms) / 1000 if s.oldest_ms is not None else 0.0
        yield GaugeMetricFamily(
            "cybernetic_outbox_oldest_age_seconds",
            "Age of the oldest reading not yet acknowledged",
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
            "Time from ingest to cloud acknowledgement, last batch",
            lag,
        )


class _PolicyCollector(Collector):
    def __init__(self, counts: Any) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "cybernetic_policy_decisions", "WASM policy decisions at ingest", labels=["decision"]
        )
        for name in ("allowed", "flagged", "denied", "transformed", "faults"):
            family.add_metric([name], float(getattr(self._counts, name, 0)))
        yield family


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "cybernetic_ingest_messages", "Telemetry messages received", registry=r
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
            "cybernetic_uplink_batches_sent", "Batches published to the cloud", registry=r
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
            "cybernetic_uplink_acked_readings", "Readings acknowledged by the cloud", registry=r
        )

    def count_drop(self, kind: str, reason: str, n: int) -> None:
        """The outbox's ``on_drop``: readings and events are counted apart."""
        (self.dropped if kind == "reading" else self.dropped_events).labels(reason).inc(n)

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
