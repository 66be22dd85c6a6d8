"""Phi-accrual zombie detection: declared within the stated bound, no false alarm when clean."""

from __future__ import annotations

import heapq
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.s2.config import PhiConfig
from gateway.s2.events import S2Event, ZombieDeclared, ZombieRecovered
from gateway.s2.phi import PhiAccrual, deviations_at, phi_of
from gateway.s2.zombies import ZombieDetector


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def akka_phi(y: float) -> float:
    """Akka's PhiAccrualFailureDetector formula, for comparison where it is finite."""
    e = math.exp(-y * (1.5976 + 0.070566 * y * y))
    if y > 0:
        return -math.log10(e / (1.0 + e))
    return -math.log10(1.0 - 1.0 / (1.0 + e))


@pytest.mark.parametrize("y", [-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 6.0])
def test_phi_matches_akka(y: float) -> None:
    assert phi_of(y) == pytest.approx(akka_phi(y), rel=1e-9, abs=1e-12)


@given(st.floats(min_value=-1e6, max_value=1e6), st.floats(min_value=0, max_value=10))
def test_phi_is_finite_and_monotonic(y: float, dy: float) -> None:
    assert math.isfinite(phi_of(y))
    assert phi_of(y + dy) >= phi_of(y)


def test_threshold_deviations() -> None:
    assert phi_of(deviations_at(8.0)) == pytest.approx(8.0, abs=1e-9)
    assert 5.1 < deviations_at(8.0) < 5.3


def test_phi_many_equals_phi() -> None:
    clock = Clock()
    phi = PhiAccrual(PhiConfig(), clock)
    for unit in ("a", "b", "c"):
        phi.heartbeat(unit)
        clock.now += 0.7
        phi.heartbeat(unit)
    clock.now += 2
    assert phi.phi_many() == [phi.phi(u) for u in ("a", "b", "c")]
    assert phi.phi_many(["b"]) == [phi.phi("b")]
    assert phi.max_phi() == pytest.approx(max(phi.phi_many()))
    assert phi.phi("never") == 0.0


def _jittered(rng: random.Random, cadence: float) -> float:
    """A realistic gap: Gaussian jitter plus, rarely, a retransmission delay."""
    gap = rng.gauss(cadence, 0.05 * cadence)
    if rng.random() < 0.01:
        gap += rng.expovariate(1 / 0.3)
    return max(gap, 0.01)


def test_silent_device_is_declared_within_the_stated_bound() -> None:
    clock = Clock()
    events: list[S2Event] = []
    detector = ZombieDetector(PhiConfig(), clock, emit=events.append)
    rng = random.Random(7)
    for _ in range(120):  # two minutes of 1 s heartbeats
        clock.now += _jittered(rng, 1.0)
        detector.heartbeat("sensor-1")
        assert not detector.check()
    last = clock.now
    bound = detector.bound("sensor-1")
    # Stated bound: mean + acceptable pause (3 s) + 5.22 deviations (deviation floored at 0.1 s).
    std = max(0.1, 0.05)
    assert bound <= 1.0 + 0.1 + 3.0 + deviations_at(8.0) * (std + 0.1)
    period = 0.1
    while not detector.zombies():
        clock.now += period
        detector.check()
    silence = clock.now - last
    assert bound <= silence <= bound + period + 1e-9
    assert silence < 5.0  # 1 s cadence: declared in under five seconds of silence
    declared = [e for e in events if isinstance(e, ZombieDeclared)]
    assert len(declared) == 1
    assert declared[0].unit == "sensor-1"
    assert declared[0].phi >= 8.0
    assert declared[0].mean_interval_s == pytest.approx(1.0, abs=0.1)
    detector.check()
    assert len([e for e in events if isinstance(e, ZombieDeclared)]) == 1  # declared once

    clock.now += 30
    detector.heartbeat("sensor-1")  # it comes back
    assert isinstance(events[-1], ZombieRecovered)
    assert events[-1].silent_s == pytest.approx(silence + 30)
    assert not detector.is_zombie("sensor-1")


def test_zombie_child_unit_work_is_reassigned() -> None:
    clock = Clock()
    moved: list[tuple[str, str]] = []
    events: list[S2Event] = []

    def reassign(unit: str, kind: str) -> bool:
        moved.append((unit, kind))
        return True

    detector = ZombieDetector(
        PhiConfig(acceptable_pause_s=0), clock, emit=events.append, reassign=reassign
    )
    for _ in range(10):
        detector.heartbeat("worker-2", "unit")
        detector.heartbeats(["d1", "d1", "d2"])  # a batch of readings counts once per device
        clock.now += 0.5
    detector.heartbeats(["d1", "d2"])
    clock.now += 5
    detector.heartbeats(["d1", "d2"])
    detector.check()
    assert moved == [("worker-2", "unit")]
    assert detector.zombies() == {"worker-2": "unit"}
    assert detector.counts() == {"device": 0, "unit": 1}
    event = next(e for e in events if isinstance(e, ZombieDeclared))
    assert event.reassigned
    assert event.unit_kind == "unit"
    detector.forget("worker-2")
    assert detector.zombies() == {}


def test_failing_reassignment_still_declares() -> None:
    clock = Clock()

    def broken(_unit: str, _kind: str) -> bool:
        raise RuntimeError("scheduler down")

    detector = ZombieDetector(PhiConfig(acceptable_pause_s=0), clock, reassign=broken)
    detector.heartbeat("w", "unit", expected_interval_s=1.0)
    clock.now += 60
    [event] = detector.check()
    assert not event.reassigned


def test_no_false_alarm_over_a_long_clean_run() -> None:
    """Two simulated hours, 100 devices with cadences from 1 s to 30 s and realistic jitter."""
    clock = Clock()
    events: list[S2Event] = []
    detector = ZombieDetector(PhiConfig(), clock, emit=events.append)
    rng = random.Random(2024)
    cadences = {f"d{i}": rng.choice([1.0, 2.0, 5.0, 10.0, 30.0]) for i in range(100)}
    due = [(clock.now + rng.uniform(0, c), d) for d, c in cadences.items()]
    heapq.heapify(due)
    end = clock.now + 2 * 3600
    next_check = clock.now
    while clock.now < end:
        at, device = heapq.heappop(due)
        while next_check < at:  # check every 0.5 s in between arrivals
            clock.now = next_check
            detector.check()
            next_check += 0.5
        clock.now = at
        detector.heartbeat(device)
        heapq.heappush(due, (at + _jittered(rng, cadences[device]), device))
    assert events == []
    assert detector.declared == 0
    assert detector.phi.max_phi() < 8.0
