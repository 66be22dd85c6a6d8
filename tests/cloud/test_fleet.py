"""The fleet table: gateway heartbeats (gateway.heartbeat) judged alive, late or lost by the
cloud (cloud.fleet), on the in-memory broker with real signed envelopes; and the table alone on
a manual clock, for the exact transitions and the detection bound."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from amcp.link import CloudLinks, GatewayLink, secrets_in_dir
from amcp.runtime.membroker import MemoryBroker
from amcp.runtime.session import Message, SessionSpec, connect_once
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.wire import topics
from amcp.wire.messages import Event, Heartbeat
from cloud.config import FleetSettings
from cloud.fleet import Fleet, FleetTable
from gateway.config import UplinkSettings
from gateway.heartbeat import HeartbeatSender, heartbeat_of

GATEWAY = "gw-hb"
PREFIX = topics.DEFAULT_PREFIX
BROKER = BrokerLink(reconnect_initial=0.01, reconnect_max=0.05)
INTERVAL = 0.05
FAST = FleetSettings(late_phi=3.0, lost_phi=8.0, min_lost_s=0.5, check_interval=0.02)


async def until(predicate: Callable[[], bool], within: float = 10) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls state the code under test owns
            await asyncio.sleep(0.01)


def fake_report() -> dict[str, Any]:
    """What gateway.status reports, the parts the heartbeat carries."""
    return {
        "version": "9.9.9",
        "uptime_s": 12.5,
        "sessions": {"ingest": True, "uplink": True},
        "ingest": {"paused": False, "pending": 0},
        "outbox": {"rows": 42, "bytes": 4200, "oldest_age_s": 3.5},
        "uplink": {"connected": True, "lag_s": 0.25},
        "policy": {"policy": "demo", "version": 3},
        "patterns": {"generation": 7, "rules": 2},
    }


@dataclass
class Tiers:
    broker: MemoryBroker
    fleet: Fleet
    secret: bytes
    links_dir: Path
    registry: CollectorRegistry

    def row(self) -> Any:
        return self.fleet.table.get(GATEWAY)


def sender(secret: bytes, broker: MemoryBroker, links_dir: Path) -> HeartbeatSender:
    settings = UplinkSettings(
        broker=BROKER, link_secret_file=str(links_dir / GATEWAY), heartbeat_interval=INTERVAL
    )
    return HeartbeatSender(
        settings,
        GatewayLink(GATEWAY, secret, None),
        fake_report,
        gateway=GATEWAY,
        transport=broker.transport,
    )


@contextlib.asynccontextmanager
async def running(task_of: Callable[[ChildContext], Any], name: str) -> AsyncIterator[None]:
    task = asyncio.create_task(task_of(ChildContext(name)))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def cloud(tmp_path: Path) -> AsyncIterator[Tiers]:
    links_dir = tmp_path / "links"
    links_dir.mkdir()
    secret = os.urandom(32)
    (links_dir / GATEWAY).write_text(secret.hex())
    broker = MemoryBroker()
    links = CloudLinks(secrets_in_dir(links_dir), None)
    registry = CollectorRegistry()
    fleet = Fleet(FAST, links, registry, broker=BROKER, transport=broker.transport)
    try:
        async with running(fleet.run, "fleet"):
            await until(lambda: fleet.connected)
            yield Tiers(broker, fleet, secret, links_dir, registry)
    finally:
        links.close()


async def test_heartbeats_fill_the_table_and_a_silent_gateway_goes_late_then_lost(
    tmp_path: Path,
) -> None:
    async with cloud(tmp_path) as t:
        hb = sender(t.secret, t.broker, t.links_dir)
        async with running(hb.run, "heartbeat"):
            await until(lambda: t.row() is not None and t.row().heartbeats >= 5)
            row = t.row()
            assert row.state == "alive"
            assert row.heartbeat.version == "9.9.9"
            assert row.heartbeat.outbox_rows == 42
            assert row.heartbeat.outbox_oldest_age_s == 3.5
            assert row.heartbeat.uplink_connected is True
            assert row.heartbeat.policy_version == 3
            assert row.heartbeat.patterns_generation == 7
            assert abs(row.clock_offset_s) < 1.0
            await asyncio.sleep(0.3)
            assert t.row().state == "alive"  # a steady cadence is never judged late
        stopped = asyncio.get_running_loop().time()
        await until(lambda: t.row().state == "late", 2)
        await until(lambda: t.row().state == "lost", 3)
        took = asyncio.get_running_loop().time() - stopped
        assert FAST.min_lost_s <= t.row().lost_after_s
        assert took < FAST.min_lost_s + INTERVAL + 1.0
        doc = t.fleet.report()
        assert doc["counts"] == {"alive": 0, "late": 0, "lost": 1}
        assert doc["gateways"][GATEWAY]["outbox"]["rows"] == 42
        assert t.registry.get_sample_value("cybernetic_fleet_gateways", {"state": "lost"}) == 1
        assert (
            t.registry.get_sample_value("cybernetic_fleet_state_changes_total", {"state": "lost"})
            == 1
        )
        age = t.registry.get_sample_value(
            "cybernetic_fleet_last_seen_age_seconds", {"gateway": GATEWAY}
        )
        assert age is not None
        assert age >= FAST.min_lost_s

        again = sender(t.secret, t.broker, t.links_dir)  # the gateway starts again
        async with running(again.run, "heartbeat"):
            await until(lambda: t.row().state == "alive", 2)
            assert t.row().restarts == 1
            await asyncio.sleep(0.3)
            assert t.row().state == "alive"  # the outage was not learnt as a cadence
        assert t.registry.get_sample_value("cybernetic_fleet_gateways", {"state": "alive"}) == 1


async def test_the_cloud_losing_its_own_link_declares_no_one_lost(tmp_path: Path) -> None:
    async with cloud(tmp_path) as t:
        hb = sender(t.secret, t.broker, t.links_dir)
        async with running(hb.run, "heartbeat"):
            await until(lambda: t.row() is not None and t.row().heartbeats >= 3)
            t.broker.kill()  # the cloud hears no one, for longer than min_lost_s
            await until(lambda: not t.fleet.connected)
            await asyncio.sleep(FAST.min_lost_s * 2)
            assert t.row().state == "alive"
            t.broker.start()
            await until(lambda: t.fleet.connected and hb.connected)
            seen = t.row().heartbeats
            await until(lambda: t.row().heartbeats >= seen + 3)
            assert t.row().state == "alive"
        assert t.fleet.table.changes["lost"] == 0


async def test_forged_unknown_and_garbage_heartbeats_are_refused_and_counted(
    tmp_path: Path,
) -> None:
    async with cloud(tmp_path) as t:
        forged = GatewayLink(GATEWAY, os.urandom(32), None)  # not the link's secret
        stranger = GatewayLink("gw-stranger", os.urandom(32), None)  # no secret in the cloud
        own = GatewayLink(GATEWAY, t.secret, None)
        topic = topics.heartbeat(PREFIX, GATEWAY)
        beat = Heartbeat(GATEWAY, 0, 0, interval_s=INTERVAL)
        payloads = [
            (topic, forged.seal(beat, topic)),
            (
                topics.heartbeat(PREFIX, "gw-stranger"),
                stranger.seal(
                    Heartbeat("gw-stranger", 0, 0), topics.heartbeat(PREFIX, "gw-stranger")
                ),
            ),
            (topic, b"\x00not an envelope"),
            (topic, own.seal(Event("not.a.heartbeat", 0), topic)),
            # signed by the gateway but moved to another gateway's topic: the signature
            # covers the topic
            (topics.heartbeat(PREFIX, "gw-other"), own.seal(beat, topic)),
        ]
        async with connect_once(t.broker.transport, BROKER, SessionSpec("intruder")) as link:
            for where, data in payloads:
                await link.publish(where, data, qos=0)
        await until(lambda: sum(t.fleet.report()["refused"].values()) == len(payloads))
        assert t.fleet.table.get(GATEWAY) is None
        assert t.fleet.table.get("gw-stranger") is None
        assert len(t.fleet.table) == 0
        refused = t.fleet.report()["refused"]
        assert refused.get("not_a_heartbeat") == 1
        total = sum(
            t.registry.get_sample_value(
                "cybernetic_fleet_refused_heartbeats_total", {"reason": reason}
            )
            or 0
            for reason in refused
        )
        assert total == len(payloads)

        # and the table still takes the real gateway's heartbeats
        hb = sender(t.secret, t.broker, t.links_dir)
        async with running(hb.run, "heartbeat"):
            await until(lambda: t.row() is not None and t.row().state == "alive")
        for made in (forged, stranger, own):
            made.close()


async def test_a_replayed_heartbeat_is_refused(tmp_path: Path) -> None:
    async with cloud(tmp_path) as t:
        own = GatewayLink(GATEWAY, t.secret, None)
        topic = topics.heartbeat(PREFIX, GATEWAY)
        data = own.seal(Heartbeat(GATEWAY, 0, 0, interval_s=1.0), topic)
        first = await t.fleet.receive(Message(topic, data, qos=0))
        assert first is not None
        assert await t.fleet.receive(Message(topic, data, qos=0)) is None
        assert t.fleet.report()["refused"] == {"replayed": 1}
        assert t.row().heartbeats == 1
        own.close()


# -- the table alone, on a manual clock -------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beat(seq: int, *, boot: str = "b1", interval: float = 1.0) -> Heartbeat:
    return Heartbeat(GATEWAY, seq, 0, boot=boot, interval_s=interval)


def steady(table: FleetTable, clock: Clock, n: int, interval: float = 1.0) -> None:
    for seq in range(n):
        table.accept(GATEWAY, beat(seq, interval=interval))
        clock.now += interval
        assert table.check() == []


def test_late_then_lost_at_the_bound_then_back() -> None:
    settings = FleetSettings(late_phi=3.0, lost_phi=8.0, min_lost_s=5.0)
    clock = Clock()
    table = FleetTable(settings, clock=clock, wall=clock)
    steady(table, clock, 20)
    row = table.get(GATEWAY)
    assert row is not None
    assert row.state == "alive"
    # a regular 1 s cadence: std floored at 0.1 s; late at 1 + 3.06 * 0.1 s of silence
    assert table.lost_after(GATEWAY) == pytest.approx(5.0)  # min_lost_s dominates phi's 1.5 s
    clock.now += 1.2 - 1.0  # 1.2 s of silence: still alive
    assert table.check() == []
    clock.now += 0.2  # 1.4 s
    assert [r.state for r in table.check()] == ["late"]
    clock.now += 2.0  # 3.4 s: phi is far past lost_phi, but the floor holds
    assert table.check() == []
    assert row.state == "late"
    clock.now += 1.7  # 5.1 s
    assert [r.state for r in table.check()] == ["lost"]
    assert row.lost_after_s == pytest.approx(5.1)
    clock.now += 100
    assert table.check() == []  # lost stays lost, logged and counted once
    table.accept(GATEWAY, beat(20))
    assert row.state == "alive"
    assert row.missed == 0
    assert table.changes == {"late": 1, "lost": 1, "alive": 1}
    # the 106 s outage was not learnt: the next silence is judged on the announced 1 s
    # cadence again (seeded, so with a wider deviation until a few intervals are known)
    clock.now += 1.0
    table.accept(GATEWAY, beat(21))
    clock.now += 1.8
    assert [r.state for r in table.check()] == ["late"]


def test_phi_decides_when_it_is_above_the_floor() -> None:
    settings = FleetSettings(min_lost_s=0.0)
    clock = Clock()
    table = FleetTable(settings, clock=clock, wall=clock)
    steady(table, clock, 20, interval=2.0)
    bound = table.lost_after(GATEWAY)
    assert bound == pytest.approx(2.0 + 5.226 * 0.2, abs=0.01)  # std floor: 10% of 2 s
    clock.now += bound - 2.0 - 0.01
    table.check()
    assert table.get(GATEWAY).state == "late"  # type: ignore[union-attr]
    clock.now += 0.02
    assert [r.state for r in table.check()] == ["lost"]


def test_restart_gaps_and_the_table_bound() -> None:
    clock = Clock()
    table = FleetTable(FleetSettings(max_gateways=1), clock=clock, wall=clock)
    table.accept(GATEWAY, beat(0))
    clock.now += 1
    table.accept(GATEWAY, beat(3))  # 1 and 2 never arrived
    clock.now += 1
    table.accept(GATEWAY, beat(0, boot="b2"))
    row = table.get(GATEWAY)
    assert row is not None
    assert (row.missed, row.restarts, row.heartbeats) == (2, 1, 3)
    assert table.accept("gw-two", Heartbeat("gw-two", 0, 0)) is None
    assert table.untracked == 1
    assert len(table) == 1


def test_a_heartbeat_carries_the_status_report() -> None:
    hb = heartbeat_of(
        fake_report(), node="g", seq=4, boot="b", interval_s=5.0, ingest_rate=12.3456, ts_ms=9
    )
    assert (hb.version, hb.uptime_s, hb.outbox_rows, hb.outbox_bytes) == ("9.9.9", 12.5, 42, 4200)
    assert (hb.policy, hb.policy_version, hb.patterns_rules) == ("demo", 3, 2)
    assert hb.links == {"ingest": True, "uplink": True}
    assert hb.ingest_rate == 12.346
    bare = heartbeat_of(
        {"outbox": {"oldest_age_s": None}, "policy": None},
        node="g",
        seq=0,
        boot="b",
        interval_s=5.0,
        ingest_rate=0.0,
        ts_ms=0,
    )
    assert bare.policy == ""
    assert bare.policy_version is None
    assert bare.outbox_oldest_age_s is None
