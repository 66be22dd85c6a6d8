"""Fair share: one flooding device cannot starve the others (per-device limits + budget)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.s2.admission import RateGate, Scope
from gateway.s2.config import LimitsConfig, RateLimit
from gateway.s2.events import LimitsChanged, S2Event
from gateway.s2.fairshare import FairShare, water_level


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@given(
    st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=50),
    st.floats(min_value=1, max_value=1e5),
)
def test_water_level_is_max_min_fair(demands: list[float], capacity: float) -> None:
    level = water_level(demands, capacity)
    if level is None:
        assert sum(demands) <= capacity
        return
    granted = [min(d, level) for d in demands]
    assert sum(granted) == pytest.approx(capacity, rel=1e-9)
    # Every device that was cut gets the same amount, and no uncut device got more than that.
    assert all(g <= level + 1e-9 for g in granted)
    assert any(d > level for d in demands)


def test_fair_share_engages_under_pressure_and_releases() -> None:
    fair = FairShare()
    assert fair.update(1.0, capacity=100, allowed=50, refused=0) is None
    assert not fair.engaged
    assert fair.update(1.0, capacity=100, allowed=90, refused=0) is None
    assert fair.engaged
    assert fair.demand is not None
    fair.demand.update({"a": 10, "b": 10, "flood": 500})
    assert fair.update(1.0, capacity=100, allowed=100, refused=0) == pytest.approx(80)
    assert fair.demand == {}
    fair.demand.update({"a": 10, "b": 10})
    assert fair.update(1.0, capacity=100, allowed=20, refused=0) is None
    assert not fair.engaged


def _offers(step: int, cadence: dict[str, int]) -> list[str]:
    """Readings offered in one 10 ms step: device -> readings per second (whole steps)."""
    out: list[str] = []
    for device, per_s in cadence.items():
        if per_s >= 100:
            out.extend([device] * (per_s // 100))
        elif step % (100 // per_s) == 0:
            out.append(device)
    return out


def _run(gate: RateGate, clock: Clock, cadence: dict[str, int], seconds: int) -> Counter[str]:
    passed: Counter[str] = Counter()
    for step in range(seconds * 100):
        clock.now += 0.01
        batch = _offers(step, cadence)
        for device, ok in zip(batch, gate.admit_devices(batch), strict=True):
            passed[device] += ok
    return passed


def test_flooding_device_is_limited_while_others_keep_full_rate() -> None:
    clock = Clock()
    config = LimitsConfig(
        device=RateLimit(rate=10, burst=10), total=RateLimit(rate=10_000, burst=10_000)
    )
    gate = RateGate(config, clock)
    cadence = {f"d{i}": 5 for i in range(20)} | {"flood": 1000}
    passed = _run(gate, clock, cadence, seconds=10)
    for i in range(20):
        assert passed[f"d{i}"] == 50  # every reading of every quiet device
    assert 100 <= passed["flood"] <= 110  # 10/s for 10 s plus one burst
    assert gate.limiters[Scope.DEVICE].top_denied(1)[0][0] == "flood"


def test_budget_is_shared_max_min_fairly() -> None:
    clock = Clock()
    events: list[S2Event] = []
    config = LimitsConfig(device=RateLimit(rate=100, burst=20), total=RateLimit(rate=300, burst=60))
    gate = RateGate(config, clock, emit=events.append)
    quiet = {f"q{i}": 20 for i in range(10)}
    cadence = quiet | {"flood-a": 1000, "flood-b": 1000}
    _run(gate, clock, cadence, seconds=3)  # fair share engages within a window or two
    assert gate.fair.engaged
    assert gate.fair.cap == pytest.approx(50, rel=0.1)  # cadence vs window rounding
    passed = _run(gate, clock, cadence, seconds=10)
    for device in quiet:
        assert passed[device] >= 198  # 20/s for 10 s: the flood does not take their share
    for device in ("flood-a", "flood-b"):
        assert 450 <= passed[device] <= 560
    assert sum(passed.values()) <= 300 * 10 + 60
    assert any(isinstance(e, LimitsChanged) and e.fair_cap is not None for e in events)
    _run(gate, clock, quiet, seconds=3)  # the flood stops: the cap lifts
    assert gate.fair.cap is None
    assert gate.fair.engaged  # 200/s of a 300/s budget is above the release mark (60 %)
    _run(gate, clock, dict(list(quiet.items())[:5]), seconds=3)
    assert not gate.fair.engaged  # 100/s: demand counting stops
