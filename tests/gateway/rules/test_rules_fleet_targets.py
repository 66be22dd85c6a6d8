"""The rules service picks the cloud's ``pattern.fleet`` rows meant for its gateway (real Store
and Outbox files): ``all``, its zone (the ``zones`` row, else the configured one) and its own
id, the most specific row per rule id, over the gateway's local ``patterns`` rows; rows for
other gateways and zones never run; a bad key or document is refused and reported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from amcp.fleet import FLEET_PATTERNS, ZONES, encode_zone
from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from gateway.outbox import Outbox, OutboxSettings
from gateway.rules import PatternRule, RulesService, RulesSettings, encode_rule
from tests.gateway.rules.test_rules_service import outbox_events, readings
from tests.stopping import stop


class Rig:
    def __init__(self, svc: RulesService, store: Store, outbox: Outbox) -> None:
        self.svc = svc
        self.store = store
        self.outbox = outbox

    async def write(
        self, namespace: str, key: str, value: bytes | None, *, changes: bool = True
    ) -> None:
        """Write (or delete) a row as sync would, and wait until the service rebuilt (or,
        for a row that changes nothing here, long enough for it to have looked)."""
        mgr = self.svc.manager
        mark = (mgr.swaps, mgr.refusals, self.svc.zone)
        if value is None:
            await self.store.delete(namespace, key)
        else:
            await self.store.put(namespace, key, value)
        if not changes:
            await asyncio.sleep(0.3)  # six polls; the store's notification is immediate
            assert (mgr.swaps, mgr.refusals, self.svc.zone) == mark
            return
        async with asyncio.timeout(5):
            while (mgr.swaps, mgr.refusals, self.svc.zone) == mark:  # noqa: ASYNC110
                await asyncio.sleep(0.005)

    async def fleet(self, key: str, when: str | None, *, changes: bool = True) -> None:
        rule = None if when is None else encode_rule(PatternRule(when=when))
        await self.write(FLEET_PATTERNS, key, rule, changes=changes)

    def running(self) -> dict[str, str]:
        """Rule id → its origin, for the set running now."""
        loaded = self.svc._loaded  # what the running set was built from
        assert loaded is not None
        active = self.svc.manager.active.rules
        return {rid: src.origin for rid, src in loaded[0].items() if rid in active}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    outbox = Outbox(tmp_path / "outbox.sqlite3", OutboxSettings())
    await outbox.open()
    async with Store(tmp_path / "store.sqlite3", "gw-t") as store:
        svc = RulesService(
            RulesSettings(poll_interval=0.05),
            store,
            outbox.append_events,
            gateway="gw-t",
            zone="north",
        )
        ctx = ChildContext("rules")
        task = asyncio.create_task(svc.run(ctx))
        await ctx.wait_ready()
        yield Rig(svc, store, outbox)
        await stop(task)
    await outbox.close()


async def test_only_rows_meant_for_this_gateway_run(rig: Rig) -> None:
    await rig.fleet("all/everyone", "temp > 0")
    await rig.fleet("zone/north/northern", "temp > 0")
    await rig.fleet("gw/gw-t/mine", "temp > 0")
    await rig.fleet("zone/south/southern", "temp > 0", changes=False)  # not for us
    await rig.fleet("gw/gw-other/theirs", "temp > 0", changes=False)
    assert rig.running() == {
        "everyone": "fleet:all/everyone",
        "northern": "fleet:zone/north/northern",
        "mine": "fleet:gw/gw-t/mine",
    }
    rig.svc.stage(readings("d", 1, temp=5.0))
    assert rig.svc.fired == {"everyone": 1, "northern": 1, "mine": 1}


async def test_the_most_specific_row_of_an_id_wins_over_the_local_row(rig: Rig) -> None:
    await rig.write("patterns", "hot", encode_rule(PatternRule(when="temp > 90")))  # local
    assert rig.running() == {"hot": "store"}
    await rig.fleet("all/hot", "temp > 70")
    assert rig.running() == {"hot": "fleet:all/hot"}
    await rig.fleet("gw/gw-t/hot", "temp > 10")
    await rig.fleet("zone/north/hot", "temp > 50", changes=False)  # less specific than ours
    assert rig.running() == {"hot": "fleet:gw/gw-t/hot"}
    rig.svc.stage(readings("d", 1, temp=20.0))
    assert rig.svc.fired["hot"] == 1  # gw's threshold (10), not the zone's (50)

    await rig.fleet("gw/gw-t/hot", None)  # removed: the zone's row applies again
    assert rig.running() == {"hot": "fleet:zone/north/hot"}
    rig.svc.stage(readings("d", 1, start=2, temp=20.0))
    assert rig.svc.fired["hot"] == 1
    await rig.fleet("zone/north/hot", None)
    await rig.fleet("all/hot", None)  # every fleet row gone: the local rule again
    assert rig.running() == {"hot": "store"}


async def test_a_zones_row_moves_the_gateway_between_zones(rig: Rig) -> None:
    await rig.fleet("zone/north/northern", "temp > 0")
    await rig.fleet("zone/south/southern", "temp > 0", changes=False)
    assert set(rig.running()) == {"northern"}
    await rig.write(ZONES, "gw-t", encode_zone("south"))
    assert rig.svc.zone == "south"
    assert set(rig.running()) == {"southern"}
    await rig.write(ZONES, "gw-other", encode_zone("north"), changes=False)  # not ours
    assert set(rig.running()) == {"southern"}
    await rig.write(ZONES, "gw-t", None)  # back to the configured zone
    assert rig.svc.zone == "north"
    assert set(rig.running()) == {"northern"}


async def test_a_bad_fleet_row_is_refused_and_reported_and_the_rule_keeps_its_definition(
    rig: Rig,
) -> None:
    await rig.fleet("all/hot", "temp > 30")
    running = rig.svc.manager.active
    await rig.write(FLEET_PATTERNS, "all/hot", b"\x00not json")
    await rig.write(FLEET_PATTERNS, "everywhere/x", encode_rule(PatternRule(when="temp > 0")))
    await rig.fleet("gw/gw-other/broken", "temp > > 1", changes=False)  # not ours: not compiled
    assert rig.svc.manager.active is running
    rig.svc.stage(readings("d", 1, temp=31.0))
    assert rig.svc.fired == {"hot": 1}
    runner = rig.svc.runner
    async with asyncio.timeout(10):
        while runner.records.qsize():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    refused = [e for e in await outbox_events(rig.outbox) if e.name == "rules.refused"]
    by_rule = {e.attrs["rule"]: e.attrs for e in refused}
    assert set(by_rule) == {"hot", "everywhere/x"}
    assert by_rule["hot"]["origin"] == "fleet:all/hot"
    assert by_rule["hot"]["kept_previous"] is True
    assert by_rule["everywhere/x"]["origin"] == "fleet"
    assert "target" in by_rule["everywhere/x"]["error"]
