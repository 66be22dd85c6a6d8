"""S2 state through Prometheus: plain counters exported by a custom collector."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import DuplicateTimeseries

from amcp.runtime.metrics import MetricsServer
from gateway.s2.admission import RateGate
from gateway.s2.config import LimitsConfig, PhiConfig, RateLimit, StuckConfig
from gateway.s2.leases import LeaseTable
from gateway.s2.metrics import S2Collector
from gateway.s2.stuck import StuckDetector
from gateway.s2.zombies import ZombieDetector


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _parts(clock: Clock) -> S2Collector:
    gate = RateGate(LimitsConfig(device=RateLimit(rate=1, burst=2)), clock)
    gate.admit_devices(["flood"] * 5 + ["quiet"])
    gate.observe_load("cpu", 0.5)
    leases = LeaseTable(clock)
    leases.acquire("valve", "a", "c1")
    leases.acquire("valve", "b", "c2")
    zombies = ZombieDetector(PhiConfig(acceptable_pause_s=0), clock)
    zombies.heartbeat("w1", "unit", expected_interval_s=1)
    clock.now += 100
    zombies.check()
    stuck = StuckDetector(StuckConfig(min_samples=2, min_duration_s=1), clock)
    for _ in range(3):
        clock.now += 1
        stuck.observe("d", {"t": 1.0})
    return S2Collector(gate=gate, leases=leases, zombies=zombies, stuck=stuck)


def test_collector_exports_limits_leases_zombies_sensors() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    registry.register(_parts(clock))
    samples = _samples(generate_latest(registry).decode())
    decisions = "cybernetic_s2_rate_decisions_total"
    assert samples[(decisions, (("result", "allowed"), ("scope", "device")))] == 3
    assert samples[(decisions, (("result", "refused"), ("scope", "device")))] == 3
    assert samples[("cybernetic_s2_rate_top_refused", (("key", "flood"), ("scope", "device")))] == 3
    assert samples[("cybernetic_s2_rate_limited_keys", (("scope", "device"),))] == 1
    assert samples[("cybernetic_s2_rate_limit_per_second", (("scope", "device"),))] == 1
    assert samples[("cybernetic_s2_rate_load_factor", ())] == 1
    assert samples[("cybernetic_s2_load_signal", (("signal", "cpu"),))] == 0.5
    assert samples[("cybernetic_s2_leases_active", ())] == 1
    assert samples[("cybernetic_s2_lease_refusals_total", (("reason", "held"),))] == 1
    assert samples[("cybernetic_s2_zombies", (("kind", "unit"),))] == 1
    assert samples[("cybernetic_s2_zombies_declared_total", ())] == 1
    assert samples[("cybernetic_s2_phi_max", ())] > 8
    assert samples[("cybernetic_s2_sensors_stuck", ())] == 1


def test_describe_registers_names_so_clashes_are_caught() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    registry.register(_parts(clock))
    with pytest.raises(DuplicateTimeseries):
        registry.register(S2Collector(leases=LeaseTable(clock)))


def test_metrics_are_served_over_http() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    registry.register(_parts(clock))
    server = MetricsServer(registry, "127.0.0.1:0")
    server.start()
    try:
        body = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    finally:
        server.close()
    assert "cybernetic_s2_leases_active 1.0" in body
    assert 'cybernetic_s2_zombies{kind="unit"} 1.0' in body
