"""Limits rows of the gateway's store applied to the S2 rate gate (gateway.s2.limit_rows), on
real store files: targeting, precedence over [s2.limits], removal, zones, refusals, reload."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from amcp.fleet import LIMITS, ZONES, encode_limit, encode_zone, limit_value
from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.wire.telemetry import EventRecord
from gateway.s2.admission import RateGate, Scope
from gateway.s2.config import LimitsConfig, RateLimit
from gateway.s2.limit_rows import LimitRows, LimitRowsCollector

CONFIG = LimitsConfig(
    device=RateLimit(1000.0, 1000),
    device_overrides={"pinned": RateLimit(50.0, 50)},
    capability_overrides={},
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limit(rate: float, burst: int = 1) -> bytes:
    return encode_limit(limit_value(rate, burst))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "store.sqlite3", site="gw-1") as s:
        yield s


def make(store: Store, zone: str = "north") -> tuple[LimitRows, RateGate, list[EventRecord]]:
    gate = RateGate(CONFIG, Clock())
    events: list[EventRecord] = []
    rows = LimitRows(gate, CONFIG, store, gateway="gw-1", zone=zone, report=events.extend)
    return rows, gate, events


async def until(done: Callable[[], bool], within_s: float = 5.0) -> bool:
    for _ in range(int(within_s / 0.01)):
        if done():
            return True
        await asyncio.sleep(0.01)
    return done()


def overrides(gate: RateGate, scope: Scope = Scope.DEVICE) -> dict[str, RateLimit]:
    return gate.limiters[scope].overrides()


async def test_rows_meant_for_this_gateway_apply_and_removal_restores_the_config(
    store: Store,
) -> None:
    rows, gate, events = make(store)
    await store.write(
        [
            (LIMITS, "all/device/flood", limit(5, 5)),
            (LIMITS, "all/device/pinned", limit(2, 2)),
            (LIMITS, "all/capability/valve.open", limit(1)),
            (LIMITS, "all/principal/alice", limit(3, 4)),
            (LIMITS, "gw/gw-2/device/other", limit(1)),  # another gateway's
            (LIMITS, "zone/south/device/other", limit(1)),  # another zone's
        ]
    )
    await rows.refresh()
    assert overrides(gate)["flood"] == RateLimit(5.0, 5)
    assert overrides(gate)["pinned"] == RateLimit(2.0, 2)  # the row beats [s2.limits]
    assert "other" not in overrides(gate)
    assert overrides(gate, Scope.CAPABILITY) == {"valve.open": RateLimit(1.0, 1)}
    assert overrides(gate, Scope.USER) == {"alice": RateLimit(3.0, 4)}
    assert rows.counts["applied"] == 4
    # one event says what changed (the audit chain records it); nothing was refused
    assert [(e.name, sorted(e.attrs["changed"])) for e in events] == [
        (
            "s2.limits.applied",
            ["all/capability/valve.open", "all/device/flood", "all/device/pinned",
             "all/principal/alice"],
        )
    ]  # fmt: skip

    # the gate now holds the device to the row: 5 at once, then refused
    flags = gate.admit_devices(["flood"] * 20)
    assert flags.count(True) == 5

    await store.delete(LIMITS, "all/device/flood")
    await store.delete(LIMITS, "all/device/pinned")
    await rows.refresh()
    assert "flood" not in overrides(gate)  # back to the scope's default
    assert overrides(gate)["pinned"] == RateLimit(50.0, 50)  # back to its [s2.limits] override
    assert rows.counts["restored"] == 2


async def test_the_most_specific_row_wins_and_a_zone_row_moves_the_gateway(store: Store) -> None:
    rows, gate, _ = make(store, zone="north")
    await store.write(
        [
            (LIMITS, "all/device/d", limit(10)),
            (LIMITS, "zone/north/device/d", limit(20)),
            (LIMITS, "zone/south/device/d", limit(30)),
        ]
    )
    await rows.refresh()
    assert overrides(gate)["d"].rate == 20.0
    await store.put(LIMITS, "gw/gw-1/device/d", limit(40))
    await rows.refresh()
    assert overrides(gate)["d"].rate == 40.0
    await store.delete(LIMITS, "gw/gw-1/device/d")
    await rows.refresh()
    assert overrides(gate)["d"].rate == 20.0

    await store.put(ZONES, "gw-1", encode_zone("south"))  # the cloud moves us to south
    await rows.refresh()
    assert rows.zone == "south"
    assert overrides(gate)["d"].rate == 30.0
    await store.put(ZONES, "gw-2", encode_zone("east"))  # another gateway's membership
    await store.delete(ZONES, "gw-1")  # back to the configured zone
    await rows.refresh()
    assert rows.zone == "north"
    assert overrides(gate)["d"].rate == 20.0


async def test_a_bad_row_is_refused_reported_once_and_never_applied(store: Store) -> None:
    rows, gate, events = make(store)
    await store.put(LIMITS, "all/device/d", limit(7, 7))
    await rows.refresh()
    assert overrides(gate)["d"] == RateLimit(7.0, 7)

    bad = msgspec.msgpack.encode({"rate": 5.0, "burst": 0})  # rate fine, burst not
    await store.write(
        [
            (LIMITS, "all/device/d", bad),  # replaces the good row
            (LIMITS, "all/device/e", msgspec.msgpack.encode({"rate": -1})),
            (LIMITS, "all/gizmo/x", limit(1)),  # unknown scope
            (LIMITS, "everywhere/device/x", limit(1)),  # unknown target
        ]
    )
    await rows.refresh()
    await rows.refresh()  # the same bad rows again: reported once
    assert overrides(gate)["d"] == RateLimit(7.0, 7)  # the last good value stays, whole
    assert "e" not in overrides(gate)
    assert "x" not in overrides(gate)
    by_key = {e.source: e for e in events if e.name == "s2.limits.refused"}
    assert set(by_key) == {"all/device/d", "all/device/e", "all/gizmo/x", "everywhere/device/x"}
    assert all(e.severity == "warning" for e in by_key.values())
    assert {e.name for e in events} == {"s2.limits.refused", "s2.limits.applied"}
    assert by_key["all/device/d"].attrs["field"] == "burst"
    assert by_key["all/device/d"].attrs["kept_previous"] is True
    assert by_key["all/device/e"].attrs["field"] == "rate"
    assert by_key["all/device/e"].attrs["kept_previous"] is False
    assert by_key["all/gizmo/x"].attrs["field"] == "scope"
    assert by_key["everywhere/device/x"].attrs["field"] == "target"
    assert rows.counts["refused"] == 4

    await store.put(LIMITS, "all/device/d", limit(3, 3))  # fixed in the cloud
    await rows.refresh()
    assert overrides(gate)["d"] == RateLimit(3.0, 3)

    registry = CollectorRegistry()
    registry.register(LimitRowsCollector(rows))
    assert registry.get_sample_value("cybernetic_s2_limit_rows_total", {"outcome": "refused"}) == 4
    assert registry.get_sample_value("cybernetic_s2_limit_rows_total", {"outcome": "applied"}) == 2
    assert registry.get_sample_value("cybernetic_s2_limit_rows_in_force", {"scope": "device"}) == 1

    await store.put(ZONES, "gw-1", msgspec.msgpack.encode({"zone": "a/b"}))
    await rows.refresh()
    assert rows.zone == "north"
    assert events[-1].attrs["namespace"] == ZONES
    assert events[-1].attrs["field"] == "zone"


async def test_a_reload_keeps_the_rows_on_top(store: Store) -> None:
    rows, gate, _ = make(store)
    await store.put(LIMITS, "all/device/pinned", limit(2, 2))
    await rows.refresh()
    reloaded = msgspec.structs.replace(
        CONFIG, device_overrides={"pinned": RateLimit(60.0, 60), "new": RateLimit(9.0, 9)}
    )
    rows.apply_config(reloaded)
    assert overrides(gate)["pinned"] == RateLimit(2.0, 2)
    assert overrides(gate)["new"] == RateLimit(9.0, 9)
    await store.delete(LIMITS, "all/device/pinned")
    await rows.refresh()
    assert overrides(gate)["pinned"] == RateLimit(60.0, 60)  # the reloaded config's value


async def test_the_running_child_follows_the_store_live(store: Store) -> None:
    rows, gate, _ = make(store)
    await store.put(LIMITS, "all/device/early", limit(4, 4))
    ctx = ChildContext("limits")
    task = asyncio.create_task(rows.run(ctx))
    try:
        async with asyncio.timeout(5):
            await ctx.wait_ready()
        assert overrides(gate)["early"] == RateLimit(4.0, 4)  # applied before ready
        await store.put(LIMITS, "all/device/late", limit(6, 6))
        assert await until(lambda: "late" in overrides(gate))
        await store.delete(LIMITS, "all/device/early")
        assert await until(lambda: "early" not in overrides(gate))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
