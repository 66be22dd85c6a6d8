"""S2 under 50,000 distinct device names: bounded state, bounded events, flat memory.

Issue 16, finding 7: with auto-registration on, 50,000 distinct names grew the gateway from
47 to 158 MiB and sent more than 18,000 ``s2.zombie`` events within a minute. These tests
drive :class:`S2Service` with simulated time (no timing assertions) and check what it keeps
and what it sends.
"""

from __future__ import annotations

import gc
import math
import tracemalloc
from collections import Counter

import pytest

from amcp.wire.telemetry import EventRecord, Reading
from gateway.s2.config import EventsConfig, S2Config
from gateway.s2.service import S2Service

NAMES = 50_000
CAP = 10_000  # the default max_units / max_zombies / max_devices / max_keys
SUMMARY = "s2.events.suppressed"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _service(clock: Clock, config: S2Config | None = None) -> S2Service:
    service = S2Service(config or S2Config(), clock=clock)
    service._cpu = lambda: 0.0  # type: ignore[method-assign] # real CPU use is not simulated
    return service


def _drain(service: S2Service, at: float, into: list[tuple[float, EventRecord]]) -> None:
    while not service.events.empty():
        into.append((at, service.events.get_nowait()))


def _assert_tables_at_most_cap(service: S2Service) -> None:
    assert len(service.zombies.phi) <= CAP
    assert service.zombies.phi.scheduled() <= 2 * CAP + 64
    assert service.zombies.count() <= CAP
    assert len(service.stuck) <= CAP
    for limiter in service.gate.limiters.values():
        assert limiter.tracked() <= CAP
        assert len(limiter.denied_by_key) <= CAP
    demand = service.gate.fair.demand
    assert demand is None or len(demand) <= CAP
    # per-device event budgets are kept only for devices sent an event within their budget's
    # span (per_device_burst / per_device_per_minute minutes), pruned each tick (+1 s of rate)
    events = service.config.events
    span_minutes = events.per_device_burst / events.per_device_per_minute
    bound = events.burst + events.per_minute * (span_minutes + 1 / 60)
    assert service.throttle.tracked() <= bound


def test_fifty_thousand_names_keep_state_events_and_memory_bounded() -> None:
    """50,000 names, two readings each (so phi knows a cadence), then silence."""
    clock = Clock()
    service = _service(clock)
    events: list[tuple[float, EventRecord]] = []
    memory: dict[int, int] = {}
    next_tick = clock.now + 1.0
    tracemalloc.start()
    try:
        for start in range(0, NAMES, 1000):
            batch = [
                Reading(f"dev-{i:05d}", "b", 1, 0, {"t": float(i)})
                for i in range(start, start + 1000)
            ]
            for _ in range(2):  # each name twice, 0.1 s apart: one real interval
                service.stage(batch)
                clock.now += 0.1
                if clock.now >= next_tick:
                    service.tick()
                    _drain(service, clock.now, events)
                    _assert_tables_at_most_cap(service)
                    next_tick += 1.0
            if start + 1000 in (10_000, NAMES):
                del batch
                gc.collect()
                memory[start + 1000] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    flood_end = clock.now

    # tracked state is at the cap, not at 50,000
    phi = service.zombies.phi
    assert len(phi) == CAP
    assert len(service.stuck) == CAP
    assert phi.untracked == 2 * (NAMES - CAP)  # both heartbeats of every name over the cap
    assert phi.evicted == 0  # every tracked unit learnt a cadence: none was dropped

    # Memory is flat from 10,000 names on. Unbounded (the code before issue 16), each name
    # kept about 1.5 KiB: 59 MiB more at 50,000 than at 10,000, measured the same way. A leak
    # of even one dict entry per name (key slot, value, share of the table: >= ~100 bytes)
    # would add >= 3.8 MiB over 40,000 names. What may legitimately grow is the one-off
    # doubling of a table's hash array under churn (CPython resizes a dict with deletions to
    # ~3x its live entries): ~0.33 MiB per table of 10,000 entries; measured 0.9 MiB in all.
    growth = memory[NAMES] - memory[10_000]
    assert growth < 2 * 2**20, f"S2 memory grew {growth / 2**20:.2f} MiB from 10k to 50k names"

    # silence: four simulated minutes of ticks
    for _ in range(240):
        clock.now += 1.0
        service.tick()
        _drain(service, clock.now, events)
        _assert_tables_at_most_cap(service)

    # every tracked device was declared, once, and the declarations are all accounted for
    assert service.zombies.count() == CAP
    assert service.zombies.declared == CAP
    summaries = [e.attrs for _, e in events if e.name == SUMMARY]
    sent = Counter(e.name for _, e in events)
    assert sent["s2.zombie"] + sum(s["suppressed"].get("s2.zombie", 0) for s in summaries) == CAP
    one_by_one = [e.source for _, e in events if e.name == "s2.zombie"]
    assert len(one_by_one) == len(set(one_by_one))  # no device declared twice
    # the operator learns the whole extent from the last summary: 10,000 zombies, and that
    # 80,000 heartbeats of names beyond the cap could not be tracked
    assert summaries[-1]["zombies"] == CAP
    assert sum(s.get("untracked", 0) for s in summaries) == phi.untracked + phi.evicted

    # events in any simulated minute: at most the budget's burst + a minute's rate one by one,
    # plus at most one summary per summary interval
    budget = service.config.events
    per_minute_bound = budget.burst + budget.per_minute
    summary_bound = math.ceil(60 / budget.summary_interval_s) + 1
    times = [at for at, _ in events]
    for start_at in [flood_end, *times]:
        window = [e for at, e in events if start_at <= at < start_at + 60]
        assert sum(1 for e in window if e.name != SUMMARY) <= per_minute_bound
        assert sum(1 for e in window if e.name == SUMMARY) <= summary_bound
    assert len(events) < per_minute_bound * 5 + summary_bound * 5  # ~5 simulated minutes
    assert service.dropped_events == 0  # the outbox queue never overflowed


def test_fifty_thousand_one_shot_names_declare_no_zombie() -> None:
    """A name heard from once has no cadence: it churns through the table, never a zombie."""
    clock = Clock()
    service = _service(clock)
    events: list[tuple[float, EventRecord]] = []
    for start in range(0, NAMES, 1000):
        batch = [Reading(f"one-{i:05d}", "b", 1, 0, {"t": 1.0}) for i in range(start, start + 1000)]
        service.stage(batch)
        clock.now += 0.2
        service.tick()
        _drain(service, clock.now, events)
        _assert_tables_at_most_cap(service)
    phi = service.zombies.phi
    assert len(phi) == CAP
    assert phi.evicted == NAMES - CAP  # the oldest one-shot names made room for the newer
    assert phi.untracked == 0
    for _ in range(600):  # ten simulated minutes: far past the 30 s first-interval guess
        clock.now += 1.0
        service.tick()
        _drain(service, clock.now, events)
    assert service.zombies.declared == 0
    assert not [e for _, e in events if e.name == "s2.zombie"]
    assert service.zombies.max_phi() == 0.0
    # the operator is told that names were dropped, in summaries rather than per name
    summaries = [e.attrs for _, e in events if e.name == SUMMARY]
    assert sum(s.get("untracked", 0) for s in summaries) == NAMES - CAP
    assert len(summaries) <= 10 / service.config.events.summary_interval_s + 2


@pytest.mark.parametrize("per_minute", [1, 60, 600])
def test_summary_counts_what_the_budget_held_back(per_minute: int) -> None:
    """Whatever the budget, declared = sent one by one + counted in summaries."""
    clock = Clock()
    service = _service(clock, S2Config(events=EventsConfig(per_minute=per_minute, burst=5)))
    events: list[tuple[float, EventRecord]] = []
    names = [f"d{i}" for i in range(500)]
    service.zombies.heartbeats(names)
    clock.now += 1.0
    service.zombies.heartbeats(names)
    for _ in range(300):
        clock.now += 1.0
        service.tick()
        _drain(service, clock.now, events)
    summaries = [e.attrs for _, e in events if e.name == SUMMARY]
    sent = sum(1 for _, e in events if e.name == "s2.zombie")
    suppressed = sum(s["suppressed"].get("s2.zombie", 0) for s in summaries)
    assert sent + suppressed == 500
    assert 5 <= sent <= 5 + per_minute * 5
    sample = service.config.events.sample
    assert all(len(named) <= sample for s in summaries for named in s["sample"].values())
