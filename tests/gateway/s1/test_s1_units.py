"""Delegation: the unit tree's depth limit, child quota, spawn-storm breaker and tree view."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from amcp.runtime.clock import ManualClock
from amcp.runtime.config import validate
from amcp.runtime.supervisor import ChildContext, ChildSpec, Restart
from gateway.s1 import (
    ChildQuotaError,
    DepthLimitError,
    MemoryQuotaError,
    QuotaSettings,
    S1Settings,
    SpawnBreakerOpenError,
    UnitExistsError,
    UnitTree,
    UnknownUnitError,
    read_tree,
    write_tree,
)
from gateway.s1.settings import BreakerSettings


def _tree(clock: ManualClock, *, depth: int = 2, spawns: int = 100, children: int = 16) -> UnitTree:
    return UnitTree(
        "gw-u",
        root_quotas=QuotaSettings(max_children=children),
        max_depth=depth,
        breaker=BreakerSettings(max_spawns=spawns, window=10, cooldown=30),
        clock=clock,
    )


def test_spawning_past_the_depth_limit_is_refused_with_a_clear_error() -> None:
    tree = _tree(ManualClock(), depth=2)
    tree.spawn("", "line-a")
    tree.spawn("line-a", "pumps")
    with pytest.raises(DepthLimitError) as err:
        tree.spawn("line-a/pumps", "pump-1")
    assert str(err.value) == (
        "unit 'line-a/pumps/pump-1' refused: depth 3 is past the recursion limit of 2"
    )
    assert (err.value.depth, err.value.max_depth) == (3, 2)
    assert [u.path for u in tree.root.walk()] == ["", "line-a", "line-a/pumps"]


def test_a_spawn_storm_trips_the_breaker_until_the_cooldown_passes() -> None:
    clock = ManualClock()
    tree = _tree(clock, spawns=5, depth=1, children=1000)
    for i in range(5):
        tree.spawn("", f"u{i}")
    with pytest.raises(SpawnBreakerOpenError) as err:
        tree.spawn("", "u5")
    assert "spawn-storm breaker open (6 spawns within 10 s)" in str(err.value)
    assert tree.breaker.is_open
    asyncio.run(clock.advance(29))
    with pytest.raises(SpawnBreakerOpenError) as again:
        tree.spawn("", "u6")  # still open: refused before anything else is looked at
    assert again.value.retry_after == pytest.approx(1.0)
    asyncio.run(clock.advance(1.5))
    tree.spawn("", "u7")  # closed again after the cooldown
    assert tree.breaker.state()["trips"] == 1
    assert len(tree.root.children) == 6


def test_spawns_spread_over_time_never_trip_the_breaker() -> None:
    clock = ManualClock()
    tree = _tree(clock, spawns=3, depth=1)
    for i in range(10):
        tree.spawn("", f"u{i}")
        asyncio.run(clock.advance(5))
    assert not tree.breaker.is_open


def test_child_quota_duplicate_and_unknown_parent() -> None:
    tree = _tree(ManualClock(), children=2)
    tree.spawn("", "a")
    tree.spawn("", "b")
    with pytest.raises(ChildQuotaError, match="already has its quota of 2 child units"):
        tree.spawn("", "c")
    with pytest.raises(UnitExistsError):
        tree.spawn("", "a")
    with pytest.raises(UnknownUnitError, match="no unit at 'x/y'"):
        tree.spawn("x/y", "z")


def test_memory_quota_counts_the_units_own_buffered_bytes() -> None:
    tree = _tree(ManualClock())
    unit = tree.spawn("", "a", QuotaSettings(max_buffer_bytes=100))
    unit.reserve(60)
    with pytest.raises(MemoryQuotaError, match="would buffer 120 bytes, over its quota of 100"):
        unit.reserve(60)
    unit.release(60)
    unit.reserve(100)
    assert tree.root.buffered_bytes == 0  # a child's buffer is its own


async def test_units_run_their_workers_under_supervisors_and_stop_as_a_subtree(
    tmp_path: Path,
) -> None:
    tree = _tree(ManualClock(), depth=3)
    ran: list[str] = []

    async def worker(ctx: ChildContext) -> None:
        ran.append(ctx.name)
        ctx.ready()
        await asyncio.Event().wait()

    tree.spawn("", "line-a")
    task = asyncio.ensure_future(tree.run(ChildContext("units")))
    await asyncio.sleep(0)
    tree.spawn("line-a", "pumps", workers=[ChildSpec("poller", worker, Restart.TRANSIENT)])
    for _ in range(5):
        await asyncio.sleep(0)
    assert ran == ["poller"]
    data = tree.describe()
    pumps = data["root"]["children"][0]["children"][0]
    assert pumps["path"] == "line-a/pumps"
    assert pumps["state"] == "running"
    assert pumps["workers"][0]["name"] == "poller"
    write_tree(tmp_path / "units.json", data)
    assert read_tree(tmp_path / "units.json") == msgspec.json.decode(msgspec.json.encode(data))
    await tree.stop("line-a")
    assert tree.root.children == {}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_settings_reject_bad_fields_with_their_paths() -> None:
    errors = validate(
        {"units": [{"path": "a//b", "quotas": {"max_rate": 0}}], "max_depth": "x", "nope": 1},
        S1Settings,
    )
    text = "\n".join(errors)
    assert "$.max_depth" in text
    assert "$.units" in text
    assert "[0].path" in text  # the list element's field (the bad pattern) is named
    assert "nope" in text
