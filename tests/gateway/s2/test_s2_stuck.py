"""Stuck sensors and inconsistent metrics: flagged when real, silent on clean data."""

from __future__ import annotations

import math
import random

from gateway.s2.config import Relation, StuckConfig
from gateway.s2.events import (
    MetricsConsistent,
    MetricsInconsistent,
    S2Event,
    SensorRecovered,
    SensorStuck,
)
from gateway.s2.stuck import StuckDetector


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_frozen_sensor_is_flagged_then_recovers() -> None:
    clock = Clock()
    events: list[S2Event] = []
    det = StuckDetector(StuckConfig(min_samples=10, min_duration_s=60), clock, emit=events.append)
    rng = random.Random(1)
    for _ in range(100):
        clock.now += 1
        det.observe("boiler", {"temp": 70 + rng.gauss(0, 0.5), "fw": "1.2", "on": True})
    assert events == []
    for _ in range(60):  # frozen: 60 samples, but only 59 s since the first of them
        clock.now += 1
        det.observe("boiler", {"temp": 71.25})
    assert events == []
    clock.now += 1
    det.observe("boiler", {"temp": 71.25})
    [stuck] = events
    assert isinstance(stuck, SensorStuck)
    assert (stuck.device, stuck.metric, stuck.value) == ("boiler", "temp", 71.25)
    assert stuck.samples == 61
    assert stuck.frozen_s == 60  # measured from the first sample of the streak
    assert det.stuck() == [("boiler", "temp")]
    assert det.stuck_count == 1
    det.observe("boiler", {"temp": 71.25})
    assert len(events) == 1  # flagged once
    det.observe("boiler", {"temp": 72.0})
    assert isinstance(events[-1], SensorRecovered)
    assert det.stuck() == []
    assert det.stuck_count == 0


def test_both_samples_and_duration_are_required() -> None:
    clock = Clock()
    events: list[S2Event] = []
    det = StuckDetector(StuckConfig(min_samples=30, min_duration_s=300), clock, emit=events.append)
    for _ in range(1000):  # fast sensor, calm for 100 s: many samples, too short
        clock.now += 0.1
        det.observe("fast", {"p": 1.0})
    for _ in range(20):  # slow sensor, same value for 20 min: long, too few samples
        clock.now += 60
        det.observe("slow", {"p": 5.0})
    assert events == []


def test_epsilon_and_ignored_metrics() -> None:
    clock = Clock()
    events: list[S2Event] = []
    cfg = StuckConfig(min_samples=5, min_duration_s=1, epsilon=0.01, ignore=["setpoint"])
    det = StuckDetector(cfg, clock, emit=events.append)
    for i in range(10):
        clock.now += 1
        det.observe("d", {"adc": 3.300 + (0.005 if i % 2 else 0), "setpoint": 20})
    assert [(e.metric) for e in events if isinstance(e, SensorStuck)] == ["adc"]


def test_inconsistent_metrics_flag_after_consecutive_violations() -> None:
    clock = Clock()
    events: list[S2Event] = []
    power = Relation(
        name="power<=vi",
        left="power",
        op="<=",
        right="volts",
        scale=1.0,
        tolerance=5,
        consecutive=3,
    )
    humidity = Relation(name="rh<=100", left="rh", op="<=", right=100.0, consecutive=1)
    det = StuckDetector(StuckConfig(relations=[power, humidity]), clock, emit=events.append)
    det.observe("m", {"power": 300, "volts": 230})  # one glitch
    det.observe("m", {"power": 200, "volts": 230})
    det.observe("m", {"power": 300, "volts": 230})
    det.observe("m", {"power": 300, "volts": 230})
    assert events == []
    det.observe("m", {"power": 300, "volts": 230})
    [bad] = events
    assert isinstance(bad, MetricsInconsistent)
    assert (bad.relation, bad.left, bad.right, bad.violations) == ("power<=vi", 300, 230, 3)
    det.observe("m", {"power": 234, "volts": 230})  # within tolerance
    assert isinstance(events[-1], MetricsConsistent)
    det.observe("m", {"rh": 101.0})
    assert det.inconsistent() == [("m", "rh<=100")]
    det.observe("m", {"volts": 230})  # one side missing: not judged
    det.forget("m")
    assert det.inconsistent() == []


def test_relation_operators() -> None:
    clock = Clock()
    events: list[S2Event] = []
    relations = [
        Relation(name="eq", left="a", op="==", right="b", tolerance=0.5, consecutive=1),
        Relation(name="lt", left="a", op="<", right="b", consecutive=1),
        Relation(name="ge", left="a", op=">=", right="b", scale=2, offset=1, consecutive=1),
        Relation(name="gt", left="a", op=">", right=0.0, consecutive=1),
    ]
    det = StuckDetector(StuckConfig(relations=relations), clock, emit=events.append)
    det.observe("x", {"a": 2.0, "b": 2.2})  # eq holds, lt holds, ge: 2 >= 5.4 fails, gt holds
    assert det.inconsistent() == [("x", "ge")]
    det.observe("x", {"a": -1.0, "b": 3.0})
    assert det.inconsistent() == [("x", "eq"), ("x", "ge"), ("x", "gt")]


def test_no_false_alarm_over_a_long_clean_run() -> None:
    """A day of one-minute readings from 20 devices with noise, quantisation and a slow drift."""
    clock = Clock()
    events: list[S2Event] = []
    relation = Relation(name="p", left="power", op="<=", right="vi", tolerance=2.0)
    det = StuckDetector(StuckConfig(relations=[relation]), clock, emit=events.append)
    rng = random.Random(5)
    for minute in range(24 * 60):
        clock.now += 60 + rng.gauss(0, 1)
        for d in range(20):
            temp = 20 + 5 * math.sin(minute / 200 + d) + rng.gauss(0, 0.2)
            volts = 230 + rng.gauss(0, 2)
            amps = 2 + rng.gauss(0, 0.1)
            det.observe(
                f"d{d}",
                {
                    "temp": round(temp, 1),  # 0.1 °C resolution
                    "vi": volts * amps,
                    "power": volts * amps * (1 - abs(rng.gauss(0, 0.003))),
                    "state": "run",
                },
            )
    assert events == []
