"""Window boundaries as docs/rules.md states them, through the ingest stage with the reading's
own timestamps as the clock (``time = "event"``)."""

from __future__ import annotations

from amcp.wire.telemetry import EventRecord, Reading
from gateway.rules import PatternRule, RulesService, RulesSettings, WindowRule
from gateway.rules.manager import Sourced, build_rules

T0 = 1_700_000_000_000


async def _noop(_: list[EventRecord]) -> None:
    return None


def service(window: WindowRule, **settings: object) -> RulesService:
    svc = RulesService(RulesSettings(**settings), None, _noop, gateway="g")  # type: ignore[arg-type]
    docs = {"hot": Sourced(PatternRule(when="temp > 30"), "config"), "w": Sourced(window, "config")}
    svc.manager.swap(build_rules(docs, {}, {}, clock=svc.manager.clock).rules)
    return svc


def feed(
    svc: RulesService, at_s: list[float], device: str = "d", received_s: float = 0
) -> list[float]:
    """Readings with temp 31 at the given seconds; returns the times at which ``w`` fired."""
    out = []
    for i, t in enumerate(at_s):
        before = svc.fired["w"]
        r = Reading(device, "b", i, T0 + round(t * 1000), {"temp": 31}, round(received_s * 1000))
        svc.stage([r])
        if svc.fired["w"] > before:
            out.append(t)
    return out


def test_sliding_window_is_half_open_at_its_start() -> None:
    win = WindowRule(pattern="hot", count=3, within_s=60)
    assert feed(service(win), [0, 30, 60]) == []  # 0 is not within (0, 60]
    assert feed(service(win), [30, 60, 89.999]) == [89.999]


def test_sliding_window_fires_once_per_count_matches_then_starts_again() -> None:
    win = WindowRule(pattern="hot", count=3, within_s=10)
    assert feed(service(win), [0, 1, 2, 3, 4, 5, 6]) == [2, 5]


def test_sliding_window_counts_per_device() -> None:
    svc = service(WindowRule(pattern="hot", count=2, within_s=10))
    assert feed(svc, [0], device="a") == []
    assert feed(svc, [1], device="b") == []
    assert feed(svc, [2], device="a") == [2]


def test_tumbling_window_counts_within_slots_of_its_length() -> None:
    win = WindowRule(pattern="hot", count=2, within_s=10, kind="tumbling")
    # slots are [k*10, (k+1)*10) of the reading's timestamp (T0 is a multiple of 10 s)
    assert feed(service(win), [8, 9.999, 10, 19, 19.5, 25]) == [9.999, 19]


def test_arrival_time_uses_when_the_gateway_received_the_reading() -> None:
    win = WindowRule(pattern="hot", count=2, within_s=10)
    svc = service(win, time="arrival")
    # device clocks 100 s apart, received 1 s apart: within the window by arrival time
    assert feed(svc, [0], received_s=1) == []
    assert feed(svc, [100], received_s=2) == [100]
