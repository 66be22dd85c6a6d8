"""The rules service in-process with a real outbox and a real CRDT store: rows written to the
``patterns`` namespace take effect, alerts land in the outbox, bad rows leave the set running,
a hot swap under a continuous stream loses no events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.wire.telemetry import EventRecord, Reading
from gateway.outbox import Outbox, OutboxSettings
from gateway.rules import PatternRule, RulesService, RulesSettings, WindowRule, encode_rule
from tests.stopping import stop

T0 = 1_700_000_000_000


async def outbox_events(ob: Outbox) -> list[EventRecord]:
    out: list[EventRecord] = []
    while (batch := await ob.next_batch(10_000)) is not None:
        out += [msgspec.msgpack.decode(b, type=EventRecord) for b in batch.events]
        await ob.ack(batch.batch_id)
    return out


class Rig:
    def __init__(self, svc: RulesService, store: Store, outbox: Outbox) -> None:
        self.svc = svc
        self.store = store
        self.outbox = outbox
        self.events: list[EventRecord] = []

    async def put(self, rid: str, rule: PatternRule | WindowRule | bytes) -> None:
        """Write a row and wait until the service took it (swapped) or refused it."""
        data = rule if isinstance(rule, bytes) else encode_rule(rule)
        mgr = self.svc.manager
        mark = (mgr.swaps, mgr.refusals)
        await self.store.put("patterns", rid, data)
        async with asyncio.timeout(5):
            while (mgr.swaps, mgr.refusals) == mark:  # noqa: ASYNC110 - no event for refusals
                await asyncio.sleep(0.005)

    async def drain(self, name: str | None = None) -> list[EventRecord]:
        """Wait until the runner has written everything queued, then read the outbox."""
        runner = self.svc.runner
        async with asyncio.timeout(10):
            while runner.records.qsize() or runner.jobs.qsize():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        self.events += await outbox_events(self.outbox)
        return [e for e in self.events if name is None or e.name == name]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    outbox = Outbox(tmp_path / "outbox.sqlite3", OutboxSettings())
    await outbox.open()
    async with Store(tmp_path / "store.sqlite3", "gw-t") as store:
        svc = RulesService(
            RulesSettings(poll_interval=0.05), store, outbox.append_events, gateway="gw-t"
        )
        ctx = ChildContext("rules")
        task = asyncio.create_task(svc.run(ctx))
        await ctx.wait_ready()
        yield Rig(svc, store, outbox)
        await stop(task)
    await outbox.close()


def readings(
    device: str, n: int, start: int = 1, step_ms: int = 500, **values: float
) -> list[Reading]:
    return [
        Reading(device, "b1", s, T0 + s * step_ms, dict(values)) for s in range(start, start + n)
    ]


async def test_a_row_written_to_the_store_fires_and_its_alert_lands_in_the_outbox(rig: Rig) -> None:
    await rig.put("humid", PatternRule(when="humidity > 55"))
    await rig.put("humid3", WindowRule(pattern="humid", count=3, within_s=10, actions=["alert"]))
    batch = readings("s-1", 6, humidity=56.0) + readings("s-2", 2, humidity=40.0)
    assert rig.svc.stage(batch) is batch  # it only observes
    alerts = await rig.drain("rules.humid3")
    assert [(a.source, a.attrs["reading"]["seq"]) for a in alerts] == [("s-1", 3), ("s-1", 6)]
    assert alerts[0].severity == "warning"
    assert alerts[0].attrs["values"] == {"humidity": 56.0}
    assert rig.svc.fired == {"humid": 6, "humid3": 2}
    swaps = await rig.drain("rules.swapped")
    assert swaps[-1].attrs["patterns"] == 1
    assert swaps[-1].attrs["windows"] == 1


async def test_a_broken_row_leaves_the_running_set_in_place_and_is_reported(rig: Rig) -> None:
    await rig.put("hot", PatternRule(when="temp > 30", actions=["event"]))
    running = rig.svc.manager.active
    await rig.put("hot", PatternRule(when="temp > > 30"))
    await rig.put("junk", b"\x00not json")
    await rig.put("garbled", b'{"type": "pattern", "when": "\xff"}')  # not UTF-8
    assert rig.svc.manager.active is running
    rig.svc.stage(readings("d", 1, temp=31.0))
    assert len(await rig.drain("rules.hot")) == 1
    refused = await rig.drain("rules.refused")
    assert {e.attrs["rule"] for e in refused} == {"hot", "junk", "garbled"}
    hot = next(e for e in refused if e.attrs["rule"] == "hot")
    assert hot.severity == "error"
    assert hot.attrs["kept_previous"] is True
    assert (hot.attrs["line"], hot.attrs["column"]) == (1, 8)
    assert "ParseError" in hot.attrs["error"]


async def test_a_deleted_row_stops_its_rule(rig: Rig) -> None:
    await rig.put("hot", PatternRule(when="temp > 30", actions=["event"]))
    swapped = asyncio.create_task(rig.svc.wait_swap())
    await asyncio.sleep(0)
    await rig.store.delete("patterns", "hot")
    async with asyncio.timeout(2):
        await swapped
    rig.svc.stage(readings("d", 3, temp=31.0))
    assert await rig.drain("rules.hot") == []


async def test_a_hot_swap_under_a_continuous_stream_loses_no_events(rig: Rig) -> None:
    await rig.put("all", PatternRule(when="exists(seq)"))
    n_batches, per_batch = 200, 25
    seq = 0

    async def stream() -> None:
        nonlocal seq
        for _ in range(n_batches):
            rig.svc.stage(readings("d", per_batch, start=seq + 1, step_ms=1))
            seq += per_batch
            await asyncio.sleep(0)  # the loop runs swaps between batches, as ingest does

    async def churn() -> None:
        for i in range(30):
            await rig.store.put("patterns", f"x{i}", encode_rule(PatternRule(when=f"temp > {i}")))
            await asyncio.sleep(0.002)

    generation = rig.svc.manager.active.generation
    await asyncio.gather(stream(), churn())
    await rig.put("final", PatternRule(when="false"))
    assert rig.svc.manager.active.generation > generation + 1  # swapped while streaming
    total = n_batches * per_batch
    assert rig.svc.fired["all"] == total
    counters = rig.svc.manager.active.engine.patterns.counters("all")
    assert counters.matched == total  # carried through every swap
    assert counters.input == total


async def test_a_patterns_file_is_read_and_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[patterns.hot]\nwhen = "temp > 30"\nactions = ["event"]\n')
    seen: list[EventRecord] = []

    async def append(events: list[EventRecord]) -> None:
        seen.extend(events)

    svc = RulesService(
        RulesSettings(files=[str(path)], poll_interval=0.02), None, append, gateway="g"
    )
    ctx = ChildContext("rules")
    task = asyncio.create_task(svc.run(ctx))
    try:
        await ctx.wait_ready()
        assert set(svc.manager.active.entries) == {"hot"}
        swapped = asyncio.create_task(svc.wait_swap())
        await asyncio.sleep(0)
        path.write_text('[patterns.cold]\nwhen = "temp < 0"\n')
        async with asyncio.timeout(5):
            await swapped
        assert set(svc.manager.active.entries) == {"cold"}
        path.write_text("[patterns.cold\n")  # broken TOML: reported, the set stays
        async with asyncio.timeout(5):
            while not any(e.name == "rules.refused" for e in seen):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert set(svc.manager.active.entries) == {"cold"}
    finally:
        await stop(task)


async def test_inline_config_rules_are_overridden_by_store_rows(rig: Rig) -> None:
    settings = RulesSettings(patterns={"p": PatternRule(when="temp > 100")})
    svc = RulesService(settings, rig.store, rig.outbox.append_events, gateway="g")
    await svc.refresh(force=True)
    assert svc.manager.active.engine.process({"temp": 50}) == []
    await rig.store.put("patterns", "p", encode_rule(PatternRule(when="temp > 10")))
    assert await svc.refresh()
    assert svc.manager.active.engine.process({"temp": 50}) == ["p"]
    assert svc.manager.active.rules["p"] == PatternRule(when="temp > 10")


async def test_cooldown_rests_actions_per_key(rig: Rig) -> None:
    await rig.put("hot", PatternRule(when="temp > 30", actions=["event"], cooldown_s=10))
    rig.svc.stage(readings("a", 30, temp=31.0) + readings("b", 2, temp=31.0))  # 15 s, 0.5 s apart
    got = await rig.drain("rules.hot")
    assert sorted((e.source, e.attrs["reading"]["seq"]) for e in got) == [
        ("a", 1),
        ("a", 21),
        ("b", 1),
    ]
    assert rig.svc.suppressed == 29
