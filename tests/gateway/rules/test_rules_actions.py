"""Actions: device commands on a real broker, capabilities with retry and backoff, algedonic
signals, and failures that never stop matching."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiomqtt

from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.wire.telemetry import EventRecord, Reading
from cybernetic.mosquitto import MosquittoBroker
from gateway.rules import (
    AlgedonicAction,
    CapabilityAction,
    CommandAction,
    PatternRule,
    RulesService,
    RulesSettings,
)
from gateway.rules.actions import ActionRunner, Job
from gateway.rules.manager import Entry
from gateway.s1 import S1Settings
from tests.gateway.s1.s1_support import caps, device, make_deployment, measure
from tests.gateway.s1.s1_support import running as s1_running
from tests.stopping import stop

FAST = {"retry_initial": 0.01, "retry_max": 0.02, "poll_interval": 0.05}


class Sink:
    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[EventRecord] = []
        self.fail_first = fail_first
        self.calls = 0

    async def __call__(self, events: list[EventRecord]) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise OSError("outbox closed")
        self.events += events

    def named(self, name: str) -> list[EventRecord]:
        return [e for e in self.events if e.name == name]


async def until(cond: Any, within: float = 10) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(svc: RulesService) -> Any:
    ctx = ChildContext("rules")
    task = asyncio.create_task(svc.run(ctx))
    await ctx.wait_ready()
    try:
        yield svc
    finally:
        await stop(task)


def reading(device: str, seq: int, **values: float) -> Reading:
    return Reading(device, "b", seq, 1_700_000_000_000 + seq, dict(values))


async def test_a_command_action_reaches_the_device_on_the_local_broker(
    broker: MosquittoBroker, topic: str
) -> None:
    device = f"{topic}-valve"
    link = BrokerLink(port=broker.port, username="gateway", password="gateway-test-secret")
    rule = PatternRule(
        when="pressure > 8",
        actions=[CommandAction(action="close", args={"why": "pressure"}, timeout_ms=500)],
    )
    settings = RulesSettings(patterns={"over": rule}, **FAST)  # type: ignore[arg-type]
    svc = RulesService(settings, None, Sink(), gateway="gw", local_broker=link)
    async with (
        aiomqtt.Client(
            broker.host, broker.port, username="gateway", password="gateway-test-secret"
        ) as dev,
        running(svc),
    ):
        await dev.subscribe(f"devices/{device}/commands/+", qos=1)
        svc.stage([reading(device, 1, pressure=9.0), reading(device, 2, pressure=1.0)])
        async with asyncio.timeout(10):
            message = await anext(aiter(dev.messages))
        # the device may see the command before the runner has the broker's PUBACK
        await until(lambda: svc.runner.counts["command", "ok"] == 1)
    body = json.loads(bytes(message.payload))  # type: ignore[arg-type]
    assert message.topic.value == f"devices/{device}/commands/{body['id']}"
    assert body["action"] == "close"
    assert body["args"] == {"why": "pressure"}
    assert body["timeout_ms"] == 500
    assert body["correlation"] == "rule:over"


async def test_a_command_sent_while_the_broker_is_down_is_retried_then_reported() -> None:
    link = BrokerLink(port=1, reconnect_initial=0.01, reconnect_max=0.02)  # nothing listens
    rule = PatternRule(when="true", actions=[CommandAction(action="x")])
    sink = Sink()
    settings = RulesSettings(patterns={"p": rule}, retry_attempts=3, **FAST)  # type: ignore[arg-type]
    svc = RulesService(settings, None, sink, gateway="gw", local_broker=link)
    async with running(svc):
        svc.stage([reading("d", 1)])
        await until(lambda: sink.named("rules.action.failed"))
    failed = sink.named("rules.action.failed")[0]
    assert failed.attrs["attempts"] == 3
    assert "NotConnectedError" in failed.attrs["error"]
    assert failed.source == "d"
    assert svc.runner.counts["command", "retried"] == 2
    assert svc.runner.counts["command", "failed"] == 1


async def test_a_capability_is_retried_with_backoff_until_it_succeeds() -> None:
    calls: list[tuple[Mapping[str, Any], Any]] = []

    async def sample(args: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        calls.append((args, event["device"]))
        if len(calls) < 3:
            raise ConnectionError("device busy")

    rule = PatternRule(
        when="temp > 30", actions=[CapabilityAction(capability="sample", args={"n": 3})]
    )
    settings = RulesSettings(patterns={"p": rule}, **FAST)  # type: ignore[arg-type]
    svc = RulesService(settings, None, Sink(), gateway="gw")
    svc.register_capability("sample", sample)
    async with running(svc):
        svc.stage([reading("pump", 1, temp=31)])
        await until(lambda: svc.runner.counts["capability", "ok"] == 1)
    assert calls == [({"n": 3}, "pump")] * 3
    assert svc.runner.counts["capability", "retried"] == 2


async def test_an_unknown_capability_fails_at_once_and_matching_goes_on() -> None:
    sink = Sink()
    rule = PatternRule(when="true", actions=[CapabilityAction(capability="nope"), "event"])
    settings = RulesSettings(patterns={"p": rule}, **FAST)  # type: ignore[arg-type]
    svc = RulesService(settings, None, sink, gateway="gw")
    async with running(svc):
        for seq in range(1, 6):
            svc.stage([reading("d", seq)])
        await until(lambda: len(sink.named("rules.p")) == 5 and sink.named("rules.action.failed"))
    assert svc.fired["p"] == 5
    assert svc.runner.counts["capability", "failed"] == 5
    assert svc.runner.counts["capability", "retried"] == 0
    assert len(sink.named("rules.action.failed")) == 5


async def test_an_algedonic_action_is_a_critical_event_with_the_signal_fields() -> None:
    sink = Sink()
    rule = PatternRule(
        when="temp > 80", actions=[AlgedonicAction(intensity=0.9, reason="boiler runaway")]
    )
    settings = RulesSettings(patterns={"boil": rule}, **FAST)  # type: ignore[arg-type]
    svc = RulesService(settings, None, sink, gateway="gw-9")
    async with running(svc):
        svc.stage([reading("boiler", 7, temp=95)])
        await until(lambda: sink.named("algedonic"))
    sig = sink.named("algedonic")[0]
    assert sig.severity == "critical"
    assert sig.source == "boiler"
    assert sig.attrs["valence"] == "pain"
    assert sig.attrs["intensity"] == 0.9
    assert sig.attrs["reason"] == "boiler runaway"
    assert sig.attrs["origin"] == "rules/gw-9/boil"
    assert sig.attrs["reading"]["seq"] == 7


async def test_a_full_queue_drops_new_actions_and_counts_them() -> None:
    settings = RulesSettings(queue_max=2)
    runner = ActionRunner(settings, Sink(), gateway="gw")
    entry = Entry("pattern", (CapabilityAction(capability="c"),), 0.0, ("device",))
    for _ in range(5):
        runner.submit("p", entry, {"device": "d"})
    assert runner.jobs.qsize() == 2
    assert runner.counts["capability", "dropped"] == 3
    assert not await runner.execute(Job("p", CapabilityAction(capability="c"), {}))


async def test_a_capability_action_runs_the_gateways_own_capability_on_its_device(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    """What the daemon wires: a capability no callable is registered for goes to S1, with the
    rule as correlation; arguments its schema refuses fail at once, without retries."""
    dev = device(broker, f"{topic}-pump", {"measure": measure})
    s1 = make_deployment(
        broker,
        tmp_path,
        topic,
        "gw-r",
        S1Settings(topic_prefix=topic, capabilities=caps(dev.device)),
    ).s1
    good = PatternRule(
        when="temp > 30", actions=[CapabilityAction(capability="sensor.measure", args={"n": 2})]
    )
    bad = PatternRule(
        when="temp > 90", actions=[CapabilityAction(capability="sensor.measure", args={"n": 0})]
    )
    sink = Sink()
    settings = RulesSettings(patterns={"hot": good, "boil": bad}, **FAST)  # type: ignore[arg-type]
    svc = RulesService(settings, None, sink, gateway="gw-r")
    svc.runner.invoke = s1.invoke
    async with s1_running(dev.run(), s1.supervisor.run(ChildContext("s1"))), running(svc):
        await dev.subscribed.wait()
        await s1.executor.wait_connected(10)
        svc.stage([reading(dev.device, 1, temp=31)])
        await until(lambda: svc.runner.counts["capability", "ok"] == 1)
        svc.stage([reading(dev.device, 2, temp=95)])  # both rules fire; "boil" cannot succeed
        await until(lambda: sink.named("rules.action.failed"))
        await until(lambda: svc.runner.counts["capability", "ok"] == 2)
    assert [c.correlation for c in dev.received] == ["rule:hot", "rule:hot"]
    failed = sink.named("rules.action.failed")[0]
    assert failed.attrs["rule"] == "boil"
    assert failed.attrs["attempts"] == 1  # permanent: not retried
    assert "bad_args" in str(failed.attrs["error"])
