"""Leases and principals on a real Mosquitto: every device command takes its device's S2 lease
(intents, rule command actions, desired twins), and intents pass their principal's quota.

The stated rule (docs/s2.md, "Actuator leases"): commands to one device are granted in the
order they asked (FIFO), up to ``lease_queue`` waiting, refused beyond that (``queue_full``) or
after waiting ``lease_ttl_s`` (``wait_timeout``); a holder that never releases loses its lease
when it expires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.wire.messages import IntentUpdate
from amcp.wire.telemetry import EventRecord, Reading
from cloud.s1 import CloudS1, CloudS1Settings
from cybernetic.mosquitto import MosquittoBroker
from gateway.desired import APPLIED, MISMATCH, DesiredTwins
from gateway.rules.actions import ActionRunner, Job
from gateway.rules.model import CommandAction
from gateway.rules.settings import RulesSettings
from gateway.s1 import S1, CapabilityConfig, DeviceResponder, Done, S1Settings
from gateway.s1.responder import Step
from gateway.s2.admission import RateGate
from gateway.s2.config import LimitsConfig, RateLimit
from gateway.s2.leases import Granted, LeaseTable
from gateway.twins import TwinReporter
from tests.gateway.s1.s1_support import device, login, make_links, running, wait_for


class Valve:
    """A device action that takes a while and logs who drove it, from when to when."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds
        self.log: list[tuple[str, float, float]] = []
        self.active = 0
        self.overlapped = False

    async def __call__(self, args: dict[str, Any]) -> AsyncIterator[Step]:
        self.active += 1
        self.overlapped |= self.active > 1
        start = time.monotonic()
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.active -= 1
        self.log.append((str(args.get("who")), start, time.monotonic()))
        yield Done({"who": args.get("who")})


def _deploy(
    broker: MosquittoBroker,
    tmp: Path,
    topic: str,
    gateway: str,
    dev: str,
    *,
    gate: RateGate | None = None,
    leases: LeaseTable | None = None,
) -> tuple[S1, CloudS1]:
    links = make_links(gateway)
    settings = S1Settings(
        topic_prefix=topic,
        command_timeout=5.0,
        capabilities=[CapabilityConfig(name="valve.move", device=dev, action="move")],
    )
    s1 = S1(
        settings,
        tmp / "gateway.sqlite3",
        links.gateway,
        gateway=gateway,
        local_broker=login(broker, "gateway"),
        cloud_broker=login(broker, "gateway"),
        state_dir=tmp,
        gate=gate,
        leases=leases,
    )
    cloud = CloudS1(
        CloudS1Settings(topic_prefix=topic, client_id=f"cloud-{gateway}"),
        tmp / "cloud.sqlite3",
        links.cloud,
        broker=login(broker, "cloud"),
    )
    return s1, cloud


async def _ready(s1: S1, cloud: CloudS1, dev: DeviceResponder) -> None:
    await dev.subscribed.wait()
    await s1.executor.wait_connected(10)
    await wait_for(lambda: cloud.connected)
    async with asyncio.timeout(10):
        while not await cloud.registry.owners("valve.move"):  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(0.05)


async def _intent(cloud: CloudS1, who: str, principal: str = "") -> IntentUpdate:
    updates = [
        u async for u in cloud.router.send("valve.move", {"who": who}, 10, principal=principal)
    ]
    return updates[-1]


def _jobs(s1: S1) -> tuple[ActionRunner, list[EventRecord]]:
    seen: list[EventRecord] = []

    async def sink(records: list[EventRecord]) -> None:
        seen.extend(records)

    return ActionRunner(RulesSettings(), sink, gateway="gw", command=s1.command), seen


async def test_a_rule_action_and_an_intent_on_one_device_are_serialized_in_fifo_order(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    """A rule command, then an intent, then a second rule command, all at once on one valve:
    the device runs them one at a time, in the order they asked for the lease."""
    valve = Valve()
    dev = device(broker, f"{topic}-valve", {"move": valve})
    s1, cloud = _deploy(broker, tmp_path, topic, "gw-l", dev.device)
    runner, failed = _jobs(s1)
    ctx = ChildContext("s1")
    async with running(dev.run(), s1.supervisor.run(ctx), cloud.run(ChildContext("cloud"))):
        await _ready(s1, cloud, dev)
        first = asyncio.create_task(
            runner.execute(
                Job(
                    "close",
                    CommandAction(device=dev.device, action="move", args={"who": "rule-1"}),
                    {},
                )
            )
        )
        await wait_for(lambda: s1.leases.holders(dev.device))  # the rule holds the valve
        intent = asyncio.create_task(_intent(cloud, "intent", "user:ana"))
        await wait_for(lambda: s1.leases.waiting() == 1)  # the intent waits behind it
        second = asyncio.create_task(
            runner.execute(
                Job(
                    "open",
                    CommandAction(device=dev.device, action="move", args={"who": "rule-2"}),
                    {},
                )
            )
        )
        await wait_for(lambda: s1.leases.waiting() == 2)
        assert await first
        final = await intent
        assert await second
    assert final.state == "done", final
    assert [who for who, _, _ in valve.log] == ["rule-1", "intent", "rule-2"]
    assert not valve.overlapped
    for (_, _, end), (_, start, _) in zip(valve.log, valve.log[1:], strict=False):
        assert start >= end
    assert not failed
    assert s1.leases.active() == 0  # every lease was given back
    assert {c.correlation for c in dev.received} >= {"rule:close", "rule:open"}


async def test_a_holder_that_never_releases_loses_the_device_when_its_lease_expires(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    """A crashed holder (it took the lease and died): the intent waits, then gets the device
    once the lease's time to live is over, without anybody sweeping the table."""
    valve = Valve(0.05)
    dev = device(broker, f"{topic}-stuck", {"move": valve})
    leases = LeaseTable(time.monotonic, ttl_s=0.8, max_queue=4)
    s1, cloud = _deploy(broker, tmp_path, topic, "gw-x", dev.device, leases=leases)
    async with running(
        dev.run(), s1.supervisor.run(ChildContext("s1")), cloud.run(ChildContext("c"))
    ):
        await _ready(s1, cloud, dev)
        assert isinstance(leases.acquire(dev.device, "crashed", "gone-1"), Granted)
        started = time.monotonic()
        final = await _intent(cloud, "after-crash")
        waited = time.monotonic() - started
    assert final.state == "done", final
    assert waited >= 0.5
    assert leases.expired == 1


async def test_a_full_lease_queue_refuses_the_intent_with_its_reason(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    dev = device(broker, f"{topic}-full", {"move": Valve(0.05)})
    leases = LeaseTable(time.monotonic, ttl_s=30, max_queue=0)
    s1, cloud = _deploy(broker, tmp_path, topic, "gw-f", dev.device, leases=leases)
    async with running(
        dev.run(), s1.supervisor.run(ChildContext("s1")), cloud.run(ChildContext("c"))
    ):
        await _ready(s1, cloud, dev)
        assert isinstance(leases.acquire(dev.device, "rule:busy", "held-1"), Granted)
        final = await _intent(cloud, "refused")
    assert (final.state, final.code) == ("failed", "refused")
    assert "queue_full" in (final.error or "")
    assert "rule:busy" in (final.error or "")
    assert dev.received == []  # never sent to the device


async def test_a_principal_over_its_quota_is_refused_and_told_which_limit(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    limits = LimitsConfig(user_overrides={"user:greedy": RateLimit(rate=0.01, burst=1)})
    gate = RateGate(limits, time.monotonic)
    dev = device(broker, f"{topic}-quota", {"move": Valve(0.01)})
    s1, cloud = _deploy(broker, tmp_path, topic, "gw-q", dev.device, gate=gate)
    async with running(
        dev.run(), s1.supervisor.run(ChildContext("s1")), cloud.run(ChildContext("c"))
    ):
        await _ready(s1, cloud, dev)
        first = await _intent(cloud, "one", "user:greedy")
        second = await _intent(cloud, "two", "user:greedy")
        other = await _intent(cloud, "three", "user:modest")
    assert first.state == "done"
    assert (second.state, second.code) == ("failed", "refused")
    assert "principal 'user:greedy' is over its quota" in (second.error or "")
    assert other.state == "done"  # the quota is per principal
    assert [c.args["who"] for c in dev.received] == ["one", "three"]


class TwinDevice:
    """A device whose state follows ``set`` commands and which reports it as telemetry into the
    gateway's reported twins (what ingest does for a real one) while it is online."""

    def __init__(self, reporter: TwinReporter, name: str) -> None:
        self.reporter = reporter
        self.name = name
        self.state: dict[str, Any] = {"mode": "auto", "setpoint": 20}
        self.seq = 0

    async def set(self, args: dict[str, Any]) -> AsyncIterator[Step]:
        self.state.update(args)
        yield Done(dict(self.state))

    async def telemetry(self) -> None:
        while True:
            self.seq += 1
            ts = int(time.time() * 1000)
            self.reporter.stage([Reading(self.name, "b", self.seq, ts, dict(self.state))])
            await self.reporter.flush()
            await asyncio.sleep(0.1)


async def test_a_desired_value_reaches_an_offline_device_when_it_returns(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    """The desired setpoint is written while the device is offline: the command is not
    answered, the mismatch is reported with its reason; when the device is back (it reports
    again) the change is sent at once, and the reported twin follows."""
    store = Store(tmp_path / "twins.sqlite3", site="gw-d")
    await store.open()
    reporter = TwinReporter(store, interval=0.1)
    events: list[EventRecord] = []
    name = f"{topic}-thermo"
    thermo = TwinDevice(reporter, name)
    dev = device(broker, name, {"set": thermo.set, "move": Valve(0.01)})
    s1, _ = _deploy(broker, tmp_path, topic, "gw-d", name)
    desired = DesiredTwins(
        store,
        s1.command,
        events.extend,
        confirm_s=3.0,
        retry_initial=5.0,  # long: the device's return, not the backoff, must bring the retry
        retry_max=5.0,
        command_timeout=0.4,
    )
    try:
        async with running(s1.supervisor.run(ChildContext("s1")), desired.run(ChildContext("d"))):
            await s1.executor.wait_connected(10)
            await reporter.twins.report(name, {"setpoint": 20})
            await reporter.twins.set_desired(name, {"setpoint": 23})
            await wait_for(lambda: any(e.name == MISMATCH for e in events), 10)
            back = time.monotonic()
            async with running(dev.run(), thermo.telemetry()):
                await wait_for(lambda: any(e.name == APPLIED for e in events), 10)
                returned_in = time.monotonic() - back
                twin = await reporter.twins.get(name)
    finally:
        await store.close()
    assert twin.reported["setpoint"] == 23
    assert twin.delta == {}
    assert returned_in < 4.0  # sooner than the 5 s backoff: the device's report woke it
    mismatch = next(e for e in events if e.name == MISMATCH)
    assert "did not answer" in mismatch.attrs["reason"]
    assert mismatch.attrs["desired"] == {"setpoint": 23}
    assert mismatch.source == name
    sets = [c for c in dev.received if c.action == "set"]
    assert sets[-1].args == {"setpoint": 23}
    assert sets[-1].correlation == f"twin:{name}"


async def test_a_device_that_never_reported_here_gets_nothing_until_it_does(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    """Desired rows reach every gateway of the fleet; a gateway sends nothing for a device
    that never reported to it (another gateway's device) and raises no mismatch, until the
    device reports here: then the change goes out at once."""
    store = Store(tmp_path / "twins.sqlite3", site="gw-d")
    await store.open()
    reporter = TwinReporter(store, interval=0.1)
    events: list[EventRecord] = []
    name = f"{topic}-elsewhere"
    thermo = TwinDevice(reporter, name)
    dev = device(broker, name, {"set": thermo.set})
    s1, _ = _deploy(broker, tmp_path, topic, "gw-d", name)
    desired = DesiredTwins(store, s1.command, events.extend, confirm_s=3.0, command_timeout=0.4)
    try:
        async with running(s1.supervisor.run(ChildContext("s1")), desired.run(ChildContext("d"))):
            await s1.executor.wait_connected(10)
            async with running(dev.run()):
                await reporter.twins.set_desired(name, {"setpoint": 23})
                await wait_for(lambda: name in desired.waiting, 10)
                await asyncio.sleep(1.0)
                assert dev.received == []  # nothing sent to a device not heard from here
                assert not any(e.name == MISMATCH for e in events)
                async with running(thermo.telemetry()):  # it reports here: it is ours
                    await wait_for(lambda: any(c.action == "set" for c in dev.received), 10)
                    await wait_for(lambda: thermo.state.get("setpoint") == 23, 10)
    finally:
        await store.close()
    assert name not in desired.waiting
