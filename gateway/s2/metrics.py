"""Prometheus export of S2 state, read from plain integers when scraped.

Counting a decision with ``labels(...).inc()`` costs a lock and a dictionary lookup, more than
the GCRA decision itself. The S2 parts instead keep plain integer attributes; this collector
turns them into metric families only when Prometheus scrapes. Scrapes run on the metrics
server's thread, so everything here reads atomically copied snapshots (``list(dict)``) and
never iterates a live dictionary in Python code.

Per-key series would be unbounded (thousands of devices), so keys appear only in the
``cybernetic_s2_rate_top_refused`` gauge, limited to the worst few offenders of the current
window.

Every bounded per-device table reports ``cybernetic_s2_state_entries`` and
``cybernetic_s2_state_capacity`` (label ``table``), what it dropped to make room
(``cybernetic_s2_state_evictions_total``) and what it did not take in because it was full
(``cybernetic_s2_state_untracked_total``); the event budget reports the events it summarised
instead of sending (``cybernetic_s2_events_suppressed_total`` by type).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gateway.s2.admission import RateGate
from gateway.s2.leases import LeaseTable
from gateway.s2.stuck import StuckDetector
from gateway.s2.throttle import EventThrottle
from gateway.s2.zombies import ZombieDetector

TOP_KEYS = 5


class S2Collector:
    """Register with ``registry.register(S2Collector(gate=..., leases=..., ...))``."""

    def __init__(
        self,
        *,
        gate: RateGate | None = None,
        leases: LeaseTable | None = None,
        zombies: ZombieDetector | None = None,
        stuck: StuckDetector | None = None,
        throttle: EventThrottle | None = None,
    ) -> None:
        self._gate = gate
        self._leases = leases
        self._zombies = zombies
        self._stuck = stuck
        self._throttle = throttle

    def describe(self) -> Iterable[Metric]:
        """Names only (no samples), so the registry can detect clashes at registration."""
        return [Metric(m.name, m.documentation, m.type) for m in self._families(describe_only=True)]

    def collect(self) -> Iterable[Metric]:
        return self._families(describe_only=False)

    def _families(self, *, describe_only: bool) -> list[Metric]:
        out: list[Metric] = []
        if self._gate is not None:
            out.extend(self._rate(self._gate, describe_only=describe_only))
        if self._leases is not None:
            out.extend(self._lease(self._leases, describe_only=describe_only))
        if self._zombies is not None:
            out.extend(self._zombie(self._zombies, describe_only=describe_only))
        if self._stuck is not None:
            out.extend(self._sensor(self._stuck, describe_only=describe_only))
        if self._throttle is not None:
            out.extend(self._events(self._throttle, describe_only=describe_only))
        if any(p is not None for p in (self._gate, self._zombies, self._stuck)):
            out.extend(self._state(describe_only=describe_only))
        return out

    def _state(self, *, describe_only: bool) -> list[Metric]:
        entries = GaugeMetricFamily(
            "cybernetic_s2_state_entries",
            "Entries in each bounded per-device S2 table.",
            labels=["table"],
        )
        capacity = GaugeMetricFamily(
            "cybernetic_s2_state_capacity",
            "Most entries each per-device S2 table holds.",
            labels=["table"],
        )
        evictions = CounterMetricFamily(
            "cybernetic_s2_state_evictions",
            "Entries dropped from a full per-device S2 table to make room.",
            labels=["table"],
        )
        untracked = CounterMetricFamily(
            "cybernetic_s2_state_untracked",
            "Offers or heartbeats a full per-device S2 table did not take in.",
            labels=["table"],
        )
        families: list[Metric] = [entries, capacity, evictions, untracked]
        if describe_only:
            return families
        if self._gate is not None:
            gate = self._gate
            for scope, limiter in gate.limiters.items():
                table = f"rate_{scope.value}"
                entries.add_metric([table], limiter.tracked())
                capacity.add_metric([table], limiter.capacity)
                evictions.add_metric([table], limiter.evicted)
                untracked.add_metric([f"refusals_{scope.value}"], limiter.denied_untracked)
            demand = gate.fair.demand
            entries.add_metric(["fair_share"], len(demand) if demand is not None else 0)
            capacity.add_metric(["fair_share"], gate.fair.max_devices)
            untracked.add_metric(["fair_share"], gate.fair.untracked)
        if self._zombies is not None:
            zombies = self._zombies
            entries.add_metric(["phi"], len(zombies.phi))
            capacity.add_metric(["phi"], zombies.phi.capacity)
            evictions.add_metric(["phi"], zombies.phi.evicted)
            untracked.add_metric(["phi"], zombies.phi.untracked)
            entries.add_metric(["zombies"], zombies.count())
            capacity.add_metric(["zombies"], zombies.phi.config.max_zombies)
            evictions.add_metric(["zombies"], zombies.forgotten)
        if self._stuck is not None:
            entries.add_metric(["stuck"], len(self._stuck))
            capacity.add_metric(["stuck"], self._stuck.capacity)
            evictions.add_metric(["stuck"], self._stuck.evicted)
        return families

    @staticmethod
    def _events(throttle: EventThrottle, *, describe_only: bool) -> list[Metric]:
        sent = CounterMetricFamily(
            "cybernetic_s2_events_sent", "Per-device S2 events sent one by one."
        )
        suppressed = CounterMetricFamily(
            "cybernetic_s2_events_suppressed",
            "Per-device S2 events over the event budget, counted in a summary instead.",
            labels=["type"],
        )
        summaries = CounterMetricFamily(
            "cybernetic_s2_event_summaries", "s2.events.suppressed summaries sent."
        )
        families: list[Metric] = [sent, suppressed, summaries]
        if describe_only:
            return families
        sent.add_metric([], throttle.sent)
        for kind, count in list(throttle.suppressed.items()):
            suppressed.add_metric([kind], count)
        summaries.add_metric([], throttle.summaries)
        return families

    @staticmethod
    def _rate(gate: RateGate, *, describe_only: bool) -> list[Metric]:
        decisions = CounterMetricFamily(
            "cybernetic_s2_rate_decisions",
            "Rate-limit decisions by scope and result.",
            labels=["scope", "result"],
        )
        limit = GaugeMetricFamily(
            "cybernetic_s2_rate_limit_per_second",
            "Effective default rate per key (after load factor and fair share).",
            labels=["scope"],
        )
        limited = GaugeMetricFamily(
            "cybernetic_s2_rate_limited_keys",
            "Keys refused at least once in the current window.",
            labels=["scope"],
        )
        top = GaugeMetricFamily(
            "cybernetic_s2_rate_top_refused",
            f"Refusals this window of the {TOP_KEYS} most refused keys per scope.",
            labels=["scope", "key"],
        )
        factor = GaugeMetricFamily(
            "cybernetic_s2_rate_load_factor",
            "AIMD factor applied to every limit (1 = untightened).",
        )
        fair = GaugeMetricFamily(
            "cybernetic_s2_fair_share_cap_per_second",
            "Per-device cap from max-min fair sharing of the budget (0 when not engaged).",
        )
        signals = GaugeMetricFamily(
            "cybernetic_s2_load_signal", "Latest value of each load signal.", labels=["signal"]
        )
        families: list[Metric] = [decisions, limit, limited, top, factor, fair, signals]
        if describe_only:
            return families
        for scope, limiter in gate.limiters.items():
            decisions.add_metric([scope.value, "allowed"], limiter.allowed)
            decisions.add_metric([scope.value, "refused"], limiter.denied)
            limit.add_metric([scope.value], limiter.effective_rate())
            limited.add_metric([scope.value], limiter.limited_keys())
            for key, count in limiter.top_denied(TOP_KEYS):
                top.add_metric([scope.value, key], count)
        decisions.add_metric(["total", "allowed"], gate.budget.allowed)
        decisions.add_metric(["total", "refused"], gate.budget.denied)
        limit.add_metric(["total"], gate.budget.rate)
        factor.add_metric([], gate.adaptive.factor)
        fair.add_metric([], gate.fair.cap or 0.0)
        for name, value in gate.adaptive.values().items():
            signals.add_metric([name], value)
        return families

    @staticmethod
    def _lease(leases: LeaseTable, *, describe_only: bool) -> list[Metric]:
        active = GaugeMetricFamily("cybernetic_s2_leases_active", "Actuator leases held now.")
        waiting = GaugeMetricFamily(
            "cybernetic_s2_leases_waiting", "Commands queued behind a lease."
        )
        granted = CounterMetricFamily("cybernetic_s2_lease_grants", "Leases granted.")
        expired = CounterMetricFamily(
            "cybernetic_s2_lease_expiries", "Leases that expired unreleased."
        )
        refused = CounterMetricFamily(
            "cybernetic_s2_lease_refusals", "Lease requests refused, by reason.", labels=["reason"]
        )
        families: list[Metric] = [active, waiting, granted, expired, refused]
        if describe_only:
            return families
        active.add_metric([], leases.active())
        waiting.add_metric([], leases.waiting())
        granted.add_metric([], leases.granted)
        expired.add_metric([], leases.expired)
        for reason, count in list(leases.refused.items()):
            refused.add_metric([reason.value], count)
        return families

    @staticmethod
    def _zombie(zombies: ZombieDetector, *, describe_only: bool) -> list[Metric]:
        current = GaugeMetricFamily(
            "cybernetic_s2_zombies", "Units currently declared zombies.", labels=["kind"]
        )
        declared = CounterMetricFamily("cybernetic_s2_zombies_declared", "Zombie declarations.")
        tracked = GaugeMetricFamily(
            "cybernetic_s2_units_tracked",
            "Units with a heartbeat history (declared zombies excluded).",
        )
        phi = GaugeMetricFamily(
            "cybernetic_s2_phi_max", "Highest phi-accrual suspicion of any unit."
        )
        families: list[Metric] = [current, declared, tracked, phi]
        if describe_only:
            return families
        for kind, count in zombies.counts().items():
            current.add_metric([kind], count)
        declared.add_metric([], zombies.declared)
        tracked.add_metric([], len(zombies.phi))
        phi.add_metric([], zombies.max_phi())
        return families

    @staticmethod
    def _sensor(stuck: StuckDetector, *, describe_only: bool) -> list[Metric]:
        frozen = GaugeMetricFamily(
            "cybernetic_s2_sensors_stuck", "Metrics currently flagged as stuck."
        )
        inconsistent = GaugeMetricFamily(
            "cybernetic_s2_metrics_inconsistent",
            "Device relations currently flagged as inconsistent.",
        )
        families: list[Metric] = [frozen, inconsistent]
        if describe_only:
            return families
        frozen.add_metric([], stuck.stuck_count)
        inconsistent.add_metric([], stuck.inconsistent_count)
        return families
