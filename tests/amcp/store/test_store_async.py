"""The asyncio Store: writer thread, concurrent readers, notifications on the loop, types, twins."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from amcp.store import Change, Store, StoreClosedError
from amcp.store.twins import Twins, compute_delta
from amcp.store.types import GCounter, GMap, LWWRegister, PNCounter


async def test_writes_reads_and_notifications_on_the_loop(tmp_path: Path) -> None:
    async with Store(tmp_path / "s.db", "gw-1") as store:
        got: list[list[Change]] = []
        threads: list[int] = []
        done = asyncio.Event()

        def on_change(changes: list[Change]) -> None:
            got.append(changes)
            threads.append(threading.get_ident())
            done.set()

        unsubscribe = store.subscribe("caps", on_change, loop=asyncio.get_running_loop())
        await store.write([("caps", "a", b"1"), ("other", "x", b"2"), ("caps", "b", b"3")])
        await asyncio.wait_for(done.wait(), 5)
        assert [c.key for c in got[0]] == ["a", "b"]
        assert threads == [threading.get_ident()]
        assert await store.items("caps") == {"a": b"1", "b": b"3"}
        unsubscribe()
        await store.put("caps", "c", b"4")
        assert await store.get("caps", "c") == b"4"
        assert len(got) == 1
    with pytest.raises(StoreClosedError):
        await store.get("caps", "a")


async def test_a_failing_subscriber_does_not_undo_the_write(tmp_path: Path) -> None:
    async with Store(tmp_path / "s.db", "gw-1") as store:

        def broken(changes: list[Change]) -> None:
            raise RuntimeError(changes)

        store.subscribe(None, broken)
        await store.put("n", "k", b"v")
        assert await store.get("n", "k") == b"v"


async def test_concurrent_writers_are_serialised_without_loss(tmp_path: Path) -> None:
    async with Store(tmp_path / "s.db", "gw-1") as store:
        counter = PNCounter(store, "counters", "hits")
        async with asyncio.TaskGroup() as tg:
            for _ in range(50):
                tg.create_task(counter.increment())
            for _ in range(10):
                tg.create_task(counter.decrement(2))
        assert await counter.value() == 30


async def test_counters_add_up_across_sites(tmp_path: Path) -> None:
    async with Store(tmp_path / "a.db", "a") as a, Store(tmp_path / "b.db", "b") as b:
        ca, cb = GCounter(a, "c", "n"), GCounter(b, "c", "n")
        await ca.increment(3)
        await cb.increment(4)
        await cb.increment(1)
        with pytest.raises(TypeError):
            await ca.decrement()
        for src, dst in ((a, b), (b, a)):
            changes = await src.changes_since(0)
            await dst.merge(changes.rows, changes.chunks)
        assert await ca.value() == await cb.value() == 8


async def test_gmap_and_register(tmp_path: Path) -> None:
    async with Store(tmp_path / "s.db", "gw-1") as store:
        caps = GMap(store, "caps", dict[str, int])
        await caps.put("lamp", {"watts": 5})
        await caps.update({"fan": {"watts": 20}, "lamp": {"watts": 6}})
        assert await caps.items() == {"fan": {"watts": 20}, "lamp": {"watts": 6}}
        assert await caps.get("nope") is None
        reg = LWWRegister(store, "cfg", "mode", str)
        assert await reg.get() is None
        await reg.set("eco")
        assert await reg.get() == "eco"
        await reg.clear()
        assert await reg.get() is None


def test_delta_is_what_the_device_still_has_to_do() -> None:
    desired = {"temp": 21, "mode": "eco", "led": {"r": 1, "g": 0}, "new": True}
    reported = {"temp": 21, "mode": "off", "led": {"r": 1, "g": 5}, "extra": 1}
    assert compute_delta(desired, reported) == {"mode": "eco", "led": {"g": 0}, "new": True}
    assert compute_delta(desired, desired) == {}


async def test_twins_merge_fields_from_both_sides(tmp_path: Path) -> None:
    async with Store(tmp_path / "c.db", "cloud") as cloud, Store(tmp_path / "g.db", "gw") as gw:
        await Twins(cloud).set_desired("dev1", {"temp": 20, "mode": "eco"})
        await Twins(gw).report("dev1", {"temp": 18, "mode": "eco", "fw": "1.2"})
        await Twins(gw).report("dev2", {"temp": 1})
        for src, dst in ((cloud, gw), (gw, cloud)):
            changes = await src.changes_since(0)
            await dst.merge(changes.rows, changes.chunks)
        twin = await Twins(gw).get("dev1")
        assert twin.desired == {"temp": 20, "mode": "eco"}
        assert twin.reported == {"temp": 18, "mode": "eco", "fw": "1.2"}
        assert twin.delta == {"temp": 20}
        await Twins(cloud).set_desired("dev1", {"temp": None})
        assert (await Twins(cloud).get("dev1")).delta == {}
        with pytest.raises(ValueError, match="device id"):
            await Twins(cloud).report("a/b", {})
