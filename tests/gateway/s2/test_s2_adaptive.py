"""Load-driven tightening (AIMD) and the rate gate's command path and runtime updates."""

from __future__ import annotations

import pytest

from gateway.s2.adaptive import AdaptiveFactor, UnknownSignalError
from gateway.s2.admission import ALLOWED, Denied, RateGate, Scope
from gateway.s2.config import AdaptiveConfig, LimitsConfig, RateLimit, Watermark
from gateway.s2.events import LimitsChanged, S2Event


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _per_second(gate: RateGate, clock: Clock, device: str, offered: int) -> int:
    """Offer ``offered`` readings spread over one second; return how many passed."""
    passed = 0
    for _ in range(offered):
        clock.now += 1 / offered
        passed += gate.admit_devices([device])[0]
    return passed


def test_limits_tighten_under_outbox_pressure_then_relax() -> None:
    clock = Clock()
    events: list[S2Event] = []
    config = LimitsConfig(
        device=RateLimit(rate=100, burst=10),
        total=RateLimit(rate=1000, burst=1000),
        adaptive=AdaptiveConfig(decrease=0.5, increase=0.25, min_factor=0.1, interval_s=1.0),
    )
    gate = RateGate(config, clock, emit=events.append)
    assert _per_second(gate, clock, "d", 100) == 100

    factors = []
    for _ in range(4):  # outbox over its high mark for four intervals
        gate.observe_load("outbox_depth", 300_000)
        _per_second(gate, clock, "d", 100)
        factors.append(gate.adaptive.factor)
    assert factors == [0.5, 0.25, 0.125, 0.1]  # halves each interval, floored at min_factor
    gate.observe_load("outbox_depth", 300_000)
    assert _per_second(gate, clock, "d", 100) <= 10 + 1  # 100/s * 0.1
    assert gate.limiters[Scope.DEVICE].effective_rate() == pytest.approx(10)
    assert gate.budget.rate == pytest.approx(100)

    gate.observe_load("outbox_depth", 100_000)  # between the marks: hold
    _per_second(gate, clock, "d", 100)
    assert gate.adaptive.factor == 0.1

    relaxed = []
    for _ in range(4):  # drained below the low mark: additive recovery
        gate.observe_load("outbox_depth", 10)
        _per_second(gate, clock, "d", 100)
        relaxed.append(gate.adaptive.factor)
    assert relaxed == pytest.approx([0.35, 0.6, 0.85, 1.0])
    assert _per_second(gate, clock, "d", 100) == 100

    changes = [e for e in events if isinstance(e, LimitsChanged)]
    assert [c.factor for c in changes][:4] == factors
    assert changes[0].pressure == ["outbox_depth"]
    assert changes[-1].factor == 1.0


def test_any_high_signal_tightens_and_stale_signals_count_as_low() -> None:
    clock = Clock()
    cfg = AdaptiveConfig(
        signals={"cpu": Watermark(high=0.9, low=0.5), "ingest_backlog": Watermark(high=10, low=1)}
    )
    adaptive = AdaptiveFactor(cfg, clock)
    adaptive.observe("cpu", 0.2)
    adaptive.observe("ingest_backlog", 50)
    clock.now += 1
    assert adaptive.step() == 0.5
    assert adaptive.pressure == ["ingest_backlog"]
    clock.now += 0.5
    assert adaptive.step() == 0.5  # at most one step per interval
    clock.now += 10  # the backlog reporter went quiet: its value is stale
    assert adaptive.step() == pytest.approx(0.6)
    with pytest.raises(UnknownSignalError, match="'disk'"):
        adaptive.observe("disk", 1)


def test_watermarks_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="low"):
        Watermark(high=1, low=2)


def test_command_refused_by_user_keeps_device_credit() -> None:
    clock = Clock()
    config = LimitsConfig(
        device=RateLimit(rate=1, burst=1),
        user=RateLimit(rate=1, burst=1),
        capability=RateLimit(rate=100, burst=100),
    )
    gate = RateGate(config, clock)
    assert gate.admit(device="valve-1", user="alice", capability="open") is ALLOWED
    refused = gate.admit(device="valve-2", user="alice", capability="open")
    assert isinstance(refused, Denied)
    assert refused.scope is Scope.USER
    assert refused.key == "alice"
    assert refused.retry_after_s == pytest.approx(1.0, abs=1e-5)
    # valve-2's credit was not spent by the refused command:
    assert gate.admit(device="valve-2", user="bob") is ALLOWED
    second = gate.admit(device="valve-1")
    assert isinstance(second, Denied)
    assert second.scope is Scope.DEVICE
    assert gate.limiters[Scope.USER].denied == 1


def test_limits_change_at_runtime() -> None:
    clock = Clock()
    gate = RateGate(LimitsConfig(device=RateLimit(rate=1, burst=1)), clock)
    gate.set_limit(Scope.DEVICE, "pump", RateLimit(rate=100, burst=3))  # a CRDT row arrives
    assert gate.admit_devices(["pump"] * 4) == [True, True, True, False]
    gate.set_limit(Scope.DEVICE, "pump", None)
    gate.set_limit(Scope.DEVICE, None, RateLimit(rate=5, burst=2))
    clock.now += 10
    assert gate.admit_devices(["pump"] * 3) == [True, True, False]
    gate.set_limit(Scope.TOTAL, None, RateLimit(rate=1, burst=1))
    clock.now += 10
    assert gate.admit_devices(["a", "b"]) == [True, False]
    with pytest.raises(ValueError, match="total"):
        gate.set_limit(Scope.TOTAL, None, None)
    with pytest.raises(ValueError, match="default"):
        gate.set_limit(Scope.USER, None, None)


def test_apply_new_config_replaces_overrides() -> None:
    clock = Clock()
    gate = RateGate(LimitsConfig(device_overrides={"a": RateLimit(rate=9)}), clock)
    gate.apply(LimitsConfig(device=RateLimit(rate=2), device_overrides={"b": RateLimit(rate=7)}))
    device = gate.limiters[Scope.DEVICE]
    assert device.overrides() == {"b": RateLimit(rate=7)}
    assert device.effective_rate("a") == 2
