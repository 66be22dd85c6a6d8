"""GCRA keyed limiter and the global budget: bursts, rates, overrides, pruning."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.s2.config import RateLimit
from gateway.s2.limiter import Budget, KeyedLimiter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_then_sustained_rate() -> None:
    clock = Clock()
    lim = KeyedLimiter(RateLimit(rate=10, burst=5), clock)
    assert lim.allow_batch(["a"] * 7) == [True] * 5 + [False] * 2
    clock.now += 0.1  # one emission interval: exactly one more
    assert lim.allow_batch(["a", "a"]) == [True, False]
    assert lim.allowed == 6
    assert lim.denied == 3
    assert lim.denied_by_key == {"a": 3}


def test_keys_are_independent() -> None:
    clock = Clock()
    lim = KeyedLimiter(RateLimit(rate=1, burst=1), clock)
    assert lim.allow_batch(["a", "b", "a", "c", "b"]) == [True, True, False, True, False]


def test_sustained_rate_over_time_matches_limit() -> None:
    clock = Clock()
    lim = KeyedLimiter(RateLimit(rate=50, burst=10), clock)
    passed = 0
    for _ in range(1000):  # 10 s at 100 offers per second
        clock.now += 0.01
        passed += sum(lim.allow_batch(["k"]))
    assert 500 <= passed <= 511  # rate * time + burst


def test_override_and_removal() -> None:
    clock = Clock()
    lim = KeyedLimiter(RateLimit(rate=1, burst=1), clock, {"vip": RateLimit(rate=100, burst=3)})
    assert lim.allow_batch(["vip"] * 4) == [True, True, True, False]
    assert lim.effective_rate("vip") == 100
    lim.set_override("vip", None)
    assert lim.effective_rate("vip") == 1
    clock.now += 10
    assert lim.allow_batch(["vip", "vip"]) == [True, False]
    lim.set_override("vip", RateLimit(rate=2, burst=2))
    assert lim.overrides() == {"vip": RateLimit(rate=2, burst=2)}


def test_factor_and_cap_lower_the_rate() -> None:
    clock = Clock()
    lim = KeyedLimiter(RateLimit(rate=100, burst=1), clock)
    lim.set_factor(0.5)
    assert lim.effective_rate() == 50
    lim.set_cap(10)
    assert lim.effective_rate() == 10
    lim.set_cap(None)
    assert lim.effective_rate() == 50
    with pytest.raises(ValueError, match="factor"):
        lim.set_factor(0)
    with pytest.raises(ValueError, match="cap"):
        lim.set_cap(-1)


def test_retry_after_says_when_a_key_conforms() -> None:
    clock = Clock()
    lim = KeyedLimiter(RateLimit(rate=4, burst=1), clock)
    assert lim.retry_after("a") == 0.0
    assert lim.allow("a")
    assert lim.retry_after("a") == pytest.approx(0.25, abs=1e-6)
    clock.now += 0.25
    assert lim.retry_after("a") == 0.0
    assert lim.allow("a")


def test_demand_counting_counts_every_offer() -> None:
    clock = Clock()
    lim = KeyedLimiter(RateLimit(rate=1, burst=1), clock)
    demand: dict[str, int] = {}
    lim.allow_batch(["a", "a", "b"], demand)
    assert demand == {"a": 2, "b": 1}


offers = st.lists(
    st.tuples(st.floats(min_value=0, max_value=0.5), st.lists(st.sampled_from("abcd"), max_size=8)),
    max_size=60,
)


@given(offers, st.integers(min_value=1, max_value=5), st.floats(min_value=0.5, max_value=20))
def test_pruning_never_changes_a_decision(
    steps: list[tuple[float, list[str]]], burst: int, rate: float
) -> None:
    a_clock, b_clock = Clock(), Clock()
    a = KeyedLimiter(RateLimit(rate=rate, burst=burst), a_clock)
    b = KeyedLimiter(RateLimit(rate=rate, burst=burst), b_clock)
    for dt, keys in steps:
        a_clock.now += dt
        b_clock.now += dt
        b.prune()
        assert a.allow_batch(keys) == b.allow_batch(keys)


@given(offers)
def test_batch_equals_one_by_one(steps: list[tuple[float, list[str]]]) -> None:
    a_clock, b_clock = Clock(), Clock()
    a = KeyedLimiter(RateLimit(rate=3, burst=2), a_clock, {"c": RateLimit(rate=1, burst=1)})
    b = KeyedLimiter(RateLimit(rate=3, burst=2), b_clock, {"c": RateLimit(rate=1, burst=1)})
    for dt, keys in steps:
        a_clock.now += dt
        b_clock.now += dt
        assert a.allow_batch(keys) == [b.allow(k) for k in keys]


def test_budget_grants_burst_then_rate() -> None:
    clock = Clock()
    budget = Budget(RateLimit(rate=100, burst=50), clock)
    assert budget.take(80) == 50
    assert budget.take(1) == 0
    clock.now += 0.1
    assert budget.take(20) == 10
    assert (budget.allowed, budget.denied) == (60, 41)
    budget.set_factor(0.5)
    assert budget.rate == 50
    assert budget.take(0) == 0
