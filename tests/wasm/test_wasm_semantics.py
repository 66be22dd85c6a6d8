"""Language semantics pinned with hand-picked cases, checked on both the agent and the reference."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from amcp.wire.telemetry import Reading
from wasm.compiler import compile_policy
from wasm.decision import Decision
from wasm.host import PolicyAgent
from wasm.parser import parse
from wasm.reference import ReferenceInterpreter


def _both(
    source: str, readings: list[Reading], zones: dict[str, str] | None = None
) -> list[Decision]:
    zones = zones or {}
    got = PolicyAgent.load(source, zones=zones).evaluate_batch(readings)
    want = ReferenceInterpreter(parse(source), lambda d: zones.get(d, "")).evaluate_batch(readings)
    assert got == want
    return got


def _r(ts: int = 0, device: str = "d", recv: int = 0, **values: object) -> Reading:
    return Reading(device=device, boot="b", seq=0, ts_ms=ts, values=dict(values), received_ms=recv)


@pytest.mark.parametrize(
    "ts", [0, 1_700_000_000_000, -1, -86_400_001, 1_234_567_890_123, -(10**12)]
)
def test_clock_is_utc_hour_minute_weekday(ts: int) -> None:
    when = datetime.fromtimestamp(ts / 1000, UTC)
    source = (
        f"rule h when hour == {when.hour} and minute == {when.minute} "
        f"and weekday == {when.weekday()} then flag"
    )
    assert _both(source, [_r(ts)])[0].action == "flag"
    off = f"rule h when weekday == {(when.weekday() + 1) % 7} then flag"
    assert _both(off, [_r(ts)])[0].action == "allow"


def test_rate_counts_per_device_in_fixed_windows() -> None:
    source = 'rule busy when rate(1s) > 2 then deny because "over 2/s"'
    readings = [_r(0), _r(10), _r(20, device="e"), _r(999), _r(1000), _r(1001), _r(1002)]
    actions = [d.action for d in _both(source, readings)]
    assert actions == ["allow", "allow", "allow", "deny", "allow", "allow", "deny"]


def test_missing_and_non_numeric_fields_are_nan() -> None:
    source = 'rule a when t != t then flag because "missing"\nrule b when has t then deny'
    readings = [_r(t=1), _r(), _r(t="hot"), _r(t=None), _r(t=True), _r(t=10**400), _r(t=math.nan)]
    assert [d.action for d in _both(source, readings)] == [
        "deny",
        "flag",
        "flag",
        "flag",
        "deny",
        "flag",
        "flag",
    ]


def test_transform_keeps_other_values_and_uses_original_inputs() -> None:
    source = 'rule f when has t then transform t = (t - 32) / 1.8, u = t because "F to C"'
    [d] = _both(source, [_r(t=212, other="x")])
    assert d.action == "transform"
    assert d.values == {"t": 100.0, "u": 212.0, "other": "x"}
    assert d.reason == "F to C"
    assert d.rule == "f"


def test_device_and_zone_tests() -> None:
    zones = {"pump-1": "cold"}
    source = (
        'default deny because "unknown device"\n'
        'rule a when zone == "cold" and device matches "pump-*" then flag\n'
        'rule b when device in ["valve", "gate"] then deny\n'
        'rule c when zone != "" then allow because "zoned"\n'
    )
    ds = _both(source, [_r(device="pump-1"), _r(device="gate"), _r(device="pump-2")], zones)
    assert [(d.action, d.rule_id) for d in ds] == [("flag", 1), ("deny", 2), ("deny", 0)]
    assert ds[2].reason == "unknown device"


def test_lag_and_division_by_zero() -> None:
    source = "rule stale when lag_ms > 60000 then flag\nrule z when 1 / t > 1e300 then deny"
    ds = _both(source, [_r(ts=0, recv=60_001), _r(ts=0, recv=5, t=0), _r(ts=0, recv=5, t=-0.0)])
    assert [d.action for d in ds] == ["flag", "deny", "allow"]


def test_batches_larger_than_capacity_are_chunked_in_order() -> None:
    source = "rule busy when rate(1h) > 3 then deny"
    agent = PolicyAgent.load(compile_policy(source, batch_capacity=2, device_capacity=2))
    readings = [_r(i, device=f"d{i % 3}") for i in range(12)]
    want = ReferenceInterpreter(parse(source)).evaluate_batch(readings)
    # three devices cycle through a two-slot table: the host forgets devices (and their rate
    # windows) when it runs out of slots, so only the first batch matches the reference
    got = agent.evaluate_batch(readings[:2])
    assert got == want[:2]
    assert len(agent.evaluate_batch(readings[2:])) == 10
