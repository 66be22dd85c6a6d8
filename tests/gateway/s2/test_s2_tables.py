"""Each bounded S2 table and the event budget, one by one (issue 16, finding 7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from amcp.runtime.config import ConfigError, from_dict
from gateway.s2.admission import RateGate, Scope
from gateway.s2.config import (
    EventsConfig,
    LimitsConfig,
    PhiConfig,
    RateLimit,
    Relation,
    S2Config,
    StuckConfig,
)
from gateway.s2.events import (
    EventsSuppressed,
    S2Event,
    SensorRecovered,
    SensorStuck,
    ZombieDeclared,
    ZombieRecovered,
)
from gateway.s2.fairshare import FairShare, water_level
from gateway.s2.limiter import KeyedLimiter
from gateway.s2.metrics import S2Collector
from gateway.s2.phi import PhiAccrual
from gateway.s2.stuck import StuckDetector
from gateway.s2.throttle import EventThrottle
from gateway.s2.zombies import ZombieDetector


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- phi: one heartbeat is not a cadence ------------------------------------------------------


def test_one_heartbeat_gives_no_deadline_and_no_suspicion() -> None:
    clock = Clock()
    phi = PhiAccrual(PhiConfig(), clock)
    phi.heartbeat("once")
    assert not phi.armed("once")
    assert phi.deadline("once") == float("inf")
    clock.now += 24 * 3600  # a day later: still nothing to judge it by
    assert phi.phi("once") == 0.0
    assert phi.phi_many() == [0.0]
    assert phi.max_phi() == 0.0
    assert phi.take_overdue() == []
    phi.heartbeat("once")  # a second heartbeat: one real interval, a deadline
    assert phi.armed("once")
    assert phi.deadline("once") < float("inf")


def test_an_announced_cadence_arms_at_once() -> None:
    clock = Clock()
    detector = ZombieDetector(PhiConfig(acceptable_pause_s=0), clock)
    detector.heartbeat("worker", "unit", expected_interval_s=1.0)
    assert detector.phi.armed("worker")
    clock.now += 60
    [event] = detector.check()
    assert (event.unit, event.unit_kind) == ("worker", "unit")


def test_a_device_seen_once_is_never_declared() -> None:
    clock = Clock()
    events: list[S2Event] = []
    detector = ZombieDetector(PhiConfig(), clock, emit=events.append)
    detector.heartbeats(["once", "twice"])
    clock.now += 1.0
    detector.heartbeats(["twice"])
    for _ in range(3600):
        clock.now += 1.0
        detector.check()
    assert [e.unit for e in events if isinstance(e, ZombieDeclared)] == ["twice"]
    assert not detector.is_zombie("once")


# -- phi: the table --------------------------------------------------------------------------


def test_full_table_drops_one_shot_units_first_and_never_an_armed_one() -> None:
    clock = Clock()
    evicted: list[str] = []
    phi = PhiAccrual(PhiConfig(max_units=3), clock, on_evict=evicted.append)
    phi.heartbeat("a")
    phi.heartbeat("b")
    clock.now += 1
    phi.heartbeat("a")  # armed
    assert phi.heartbeat("c")
    assert phi.heartbeat("d")  # full: the oldest one-shot unit (b) goes
    assert evicted == ["b"]
    assert set(phi.units()) == {"a", "c", "d"}
    clock.now += 1
    phi.heartbeat("c")
    phi.heartbeat("d")  # now all three armed
    assert not phi.heartbeat("e")  # not tracked: no armed unit is ever dropped
    assert phi.untracked == 1
    assert phi.evicted == 1
    assert set(phi.units()) == {"a", "c", "d"}


def test_a_declared_zombie_frees_its_slot_and_recovers_with_its_cadence() -> None:
    clock = Clock()
    events: list[S2Event] = []
    detector = ZombieDetector(PhiConfig(max_units=2), clock, emit=events.append)
    for _ in range(20):
        detector.heartbeats(["a", "b"])
        clock.now += 1.0
    clock.now += 3.0
    detector.heartbeats(["b"])
    assert not detector.phi.heartbeat("c")  # full of armed units
    clock.now += 2.0  # a silent 6 s (bound ~4.5 s), b 2 s
    [declared] = detector.check()
    assert declared.unit == "a"
    assert "a" not in detector.phi
    assert detector.phi.heartbeat("c")  # a's slot went to a live unit
    detector.heartbeats(["b", "c"])
    clock.now += 100
    assert [e.unit for e in detector.check()] == ["b"]  # c has one heartbeat: not judged
    assert detector.check() == []  # declared once
    detector.heartbeats(["a"])  # a comes back: seeded with the cadence it had learnt
    assert isinstance(events[-1], ZombieRecovered)
    assert events[-1].unit == "a"
    assert detector.bound("a") < 10  # ~1 s cadence: not the 30 s first-interval guess


def test_zombie_table_forgets_the_oldest_declared() -> None:
    clock = Clock()
    events: list[S2Event] = []
    detector = ZombieDetector(
        PhiConfig(max_zombies=2, acceptable_pause_s=0), clock, emit=events.append
    )
    for unit in ("z1", "z2", "z3"):
        detector.heartbeat(unit, expected_interval_s=1.0)
        clock.now += 10
        detector.check()
    assert detector.zombies() == {"z2": "device", "z3": "device"}
    assert detector.forgotten == 1
    detector.heartbeat("z1")  # forgotten: a new unit, no recovery event
    assert not [e for e in events if isinstance(e, ZombieRecovered)]


def test_declarations_per_check_are_capped() -> None:
    clock = Clock()
    detector = ZombieDetector(PhiConfig(max_declared_per_check=100), clock)
    names = [f"d{i}" for i in range(250)]
    detector.heartbeats(names)
    clock.now += 1
    detector.heartbeats(names)
    clock.now += 1000
    assert [len(detector.check()) for _ in range(4)] == [100, 100, 50, 0]
    assert detector.count() == 250


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=8.0),  # time step
            st.lists(st.sampled_from("abcde"), max_size=5),  # who heartbeats
            st.booleans(),  # check after the step
        ),
        min_size=1,
        max_size=80,
    )
)
def test_the_deadline_heap_returns_what_a_full_scan_would(
    steps: list[tuple[float, list[str], bool]],
) -> None:
    """Each unit is returned at the first sweep at or after its deadline, once per silence."""
    clock = Clock()
    config = PhiConfig(first_interval_s=2.0, min_intervals=2, acceptable_pause_s=0.5)
    phi = PhiAccrual(config, clock)
    returned: set[str] = set()
    for step, units, check in steps:
        clock.now += step
        for unit in units:
            phi.heartbeat(unit)
            returned.discard(unit)
        if check:
            expected = {u for u in phi.overdue() if u not in returned}
            got = phi.take_overdue()
            assert len(got) == len(set(got))
            assert set(got) == expected
            returned |= expected
    assert phi.scheduled() <= 2 * len(phi) + 64


# -- the event budget ----------------------------------------------------------------------


def _declared(unit: str) -> ZombieDeclared:
    return ZombieDeclared(
        unit=unit, unit_kind="device", phi=9.0, silent_s=5.0, mean_interval_s=1.0, ts_ms=0
    )


def test_budget_sends_burst_then_rate_and_summarises_the_rest() -> None:
    clock = Clock()
    out: list[S2Event] = []
    config = EventsConfig(per_minute=6, burst=3, summary_interval_s=30, sample=2)
    throttle = EventThrottle(config, clock, out.append, wall=lambda: 1.0)
    sent = [throttle.offer(_declared(f"d{i}"), f"d{i}") for i in range(10)]
    assert sent == [True] * 3 + [False] * 7
    clock.now += 10.0  # one more every 10 s
    assert throttle.offer(_declared("late"), "late")
    assert not throttle.offer(_declared("later"), "later")
    summary = throttle.tick(zombies=12)
    assert isinstance(summary, EventsSuppressed)
    assert summary.suppressed == {"s2.zombie": 8}
    assert summary.sample == {"s2.zombie": ["d3", "d4"]}
    assert summary.zombies == 12
    assert out[-1] == summary
    throttle.offer(_declared("x"), "x")
    assert throttle.tick() is None  # next summary not before 30 s
    clock.now += 30
    assert throttle.tick() is not None
    assert throttle.tick() is None  # nothing new
    assert throttle.suppressed == {"s2.zombie": 9}


def test_budget_per_device_stops_a_flapping_device() -> None:
    clock = Clock()
    config = EventsConfig(per_minute=600, burst=100, per_device_per_minute=2, per_device_burst=2)
    throttle = EventThrottle(config, clock)
    assert [throttle.offer(_declared("flap"), "flap") for _ in range(4)] == [
        True,
        True,
        False,
        False,
    ]
    assert throttle.offer(_declared("calm"), "calm")  # others are not held back
    clock.now += 30
    assert throttle.offer(_declared("flap"), "flap")
    clock.now += 600
    throttle.tick()
    assert throttle.tracked() == 0  # idle per-device budgets are pruned


def test_an_end_is_sent_one_by_one_only_if_its_beginning_was() -> None:
    clock = Clock()
    out: list[S2Event] = []
    throttle = EventThrottle(EventsConfig(per_minute=1, burst=1), clock, out.append)
    detector = ZombieDetector(PhiConfig(acceptable_pause_s=0), clock, throttle=throttle)
    detector.heartbeat("first", expected_interval_s=1.0)
    detector.heartbeat("second", expected_interval_s=1.0)
    clock.now += 10
    detector.check()
    assert [e.unit for e in out if isinstance(e, ZombieDeclared)] == ["first"]
    clock.now += 120  # the budget is full again
    detector.heartbeats(["second", "first"])
    assert [e.unit for e in out if isinstance(e, ZombieRecovered)] == ["first"]
    assert throttle.pending() == {"s2.zombie": 1, "s2.zombie.recovered": 1}


def test_stuck_sensor_events_share_the_budget() -> None:
    clock = Clock()
    out: list[S2Event] = []
    throttle = EventThrottle(EventsConfig(per_minute=1, burst=2), clock, out.append)
    det = StuckDetector(StuckConfig(min_samples=2, min_duration_s=1), clock, throttle=throttle)
    for _ in range(3):
        clock.now += 1
        for device in ("a", "b", "c"):
            det.observe(device, {"t": 1.0})
    assert [e.device for e in out if isinstance(e, SensorStuck)] == ["a", "b"]
    assert det.stuck_count == 3
    clock.now += 1
    for device in ("a", "b", "c"):
        det.observe(device, {"t": 2.0})
    assert det.stuck_count == 0
    assert not [e for e in out if isinstance(e, SensorRecovered) and e.device == "c"]
    assert throttle.pending()["s2.sensor.recovered"] >= 1


# -- stuck: the table ------------------------------------------------------------------------


def test_stuck_table_drops_the_least_recently_seen_device() -> None:
    clock = Clock()
    relation = Relation(name="cap", left="h", op="<=", right=100.0, consecutive=1)
    det = StuckDetector(
        StuckConfig(min_samples=2, min_duration_s=1, max_devices=2, relations=[relation]),
        clock,
    )
    for i in range(3):
        clock.now += 1
        det.observe("old", {"t": 1.0, "h": 120.0 + i})
        det.observe("new", {"t": 1.0})
    assert det.stuck_count == 2
    assert det.inconsistent_count == 1
    det.observe("new", {"t": 1.0})  # "old" is now the least recently seen
    det.observe("third", {"t": 5.0})
    assert len(det) == 2
    assert det.evicted == 1
    assert det.stuck() == [("new", "t")]
    assert det.stuck_count == 1
    assert det.inconsistent_count == 0


# -- limiter and fair share ------------------------------------------------------------------


def test_limiter_table_prunes_before_it_drops_anything() -> None:
    clock = Clock()
    limiter = KeyedLimiter(RateLimit(rate=10, burst=1), clock, max_keys=8)
    assert all(limiter.allow_batch([f"k{i}" for i in range(8)]))
    clock.now += 1.0  # all eight TATs have passed: pruning frees them
    assert all(limiter.allow_batch([f"n{i}" for i in range(8)]))
    assert limiter.evicted == 0
    assert limiter.tracked() == 8


def test_limiter_table_drops_the_keys_closest_to_idle_when_all_are_in_debt() -> None:
    clock = Clock()
    limiter = KeyedLimiter(RateLimit(rate=1, burst=1), clock, max_keys=8)
    for i in range(8):
        limiter.allow(f"k{i}")  # TAT = now + 1 s
        clock.now += 0.01
    assert limiter.allow("new")
    assert limiter.evicted == 1  # down to 7/8 of the table, smallest TAT first
    assert limiter.tracked() == 8
    assert not limiter.allow("k7")  # the newest debts are kept
    assert limiter.allow("k0")  # k0 was dropped: a fresh burst
    assert limiter.tracked() <= 8


def test_refusal_counts_are_bounded() -> None:
    clock = Clock()
    limiter = KeyedLimiter(RateLimit(rate=1, burst=1), clock, max_keys=4)
    for i in range(10):
        limiter.allow_batch([f"k{i}", f"k{i}"])
        clock.now += 0.001
    assert len(limiter.denied_by_key) <= 4
    assert sum(limiter.denied_by_key.values()) + limiter.denied_untracked == limiter.denied


def test_fair_share_estimates_the_level_when_the_demand_table_is_full() -> None:
    fair = FairShare(max_devices=100)
    fair.demand = {}
    offers = [f"d{i}" for i in range(1000) for _ in range(2)]  # 1000 devices, 2 each
    fair.count(offers)
    assert len(fair.demand) == 100
    assert fair.overflow == 2000 - 200
    cap = fair.update(1.0, 1000.0, allowed=2000, refused=0)
    exact = water_level([2.0] * 1000, 1000.0)
    assert cap == pytest.approx(exact)
    assert fair.untracked == 1800


def test_gate_keeps_counting_demand_within_the_bound() -> None:
    clock = Clock()
    limits = LimitsConfig(total=RateLimit(rate=100, burst=100), max_keys=50)
    gate = RateGate(limits, clock)
    gate.admit_devices([f"d{i}" for i in range(200)])
    clock.now += 1.0
    gate.admit_devices([f"d{i}" for i in range(200)])  # engaged now: demand counted
    assert gate.fair.demand is not None
    assert len(gate.fair.demand) <= 50
    assert gate.limiters[Scope.DEVICE].tracked() <= 50


# -- configuration and metrics ---------------------------------------------------------------


def test_bad_bounds_are_named_with_their_path() -> None:
    data = {
        "limits": {"max_keys": 0},
        "phi": {"max_units": -1, "max_zombies": "many", "threshold": 1e6},
        "stuck": {"max_devices": 10**9},
        "events": {"per_minute": 0, "summary_interval_s": 0.1, "sample": 1000},
        "lease_queue": 10**6,
    }
    with pytest.raises(ConfigError) as info:
        from_dict(data, S2Config, environ={})
    text = "\n".join(info.value.errors)
    for path in (
        "$.limits.max_keys",
        "$.phi.max_units",
        "$.phi.max_zombies",
        "$.phi.threshold",
        "$.stuck.max_devices",
        "$.events.per_minute",
        "$.events.summary_interval_s",
        "$.events.sample",
        "$.lease_queue",
    ):
        assert path in text, path


def test_relation_names_must_be_unique() -> None:
    rel = {"name": "p", "left": "a", "op": "<=", "right": 1.0}
    with pytest.raises(ConfigError, match="unique"):
        from_dict({"stuck": {"relations": [rel, rel]}}, S2Config, environ={})


def test_defaults_bound_every_table_at_ten_thousand() -> None:
    config = from_dict({}, S2Config, environ={})
    assert config.limits.max_keys == 10_000
    assert config.phi.max_units == 10_000
    assert config.phi.max_zombies == 10_000
    assert config.stuck.max_devices == 10_000
    assert config.events == EventsConfig()


def test_tables_and_the_budget_are_exported() -> None:
    clock = Clock()
    throttle = EventThrottle(EventsConfig(burst=1, per_minute=1), clock)
    zombies = ZombieDetector(PhiConfig(max_units=2), clock, throttle=throttle)
    zombies.heartbeats(["a", "b", "c"])
    zombies.heartbeat("u", expected_interval_s=1.0)
    zombies.heartbeat("v", expected_interval_s=1.0)
    clock.now += 100
    zombies.check()
    gate = RateGate(LimitsConfig(max_keys=5), clock)
    stuck = StuckDetector(StuckConfig(max_devices=1), clock)
    stuck.observe("x", {"t": 1})
    stuck.observe("y", {"t": 1})
    registry = CollectorRegistry()
    registry.register(S2Collector(gate=gate, zombies=zombies, stuck=stuck, throttle=throttle))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert samples[("cybernetic_s2_state_capacity", (("table", "phi"),))] == 2
    assert samples[("cybernetic_s2_state_evictions_total", (("table", "phi"),))] == 3
    assert samples[("cybernetic_s2_state_entries", (("table", "zombies"),))] == 2
    assert samples[("cybernetic_s2_state_evictions_total", (("table", "stuck"),))] == 1
    assert samples[("cybernetic_s2_state_capacity", (("table", "rate_device"),))] == 5
    assert samples[("cybernetic_s2_events_sent_total", ())] == 1
    assert samples[("cybernetic_s2_events_suppressed_total", (("type", "s2.zombie"),))] == 1
