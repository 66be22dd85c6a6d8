"""The dispatcher against simulated devices on a real Mosquitto: streaming, timeouts, cancel."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiomqtt
import pytest

from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.wire import topics
from amcp.wire.messages import Intent, IntentUpdate
from cybernetic.mosquitto import MosquittoBroker
from gateway.s1 import CommandExecutor, Dispatcher, QuotaSettings, S1Settings, UnitTree
from gateway.s1.registry import CapabilityRegistry
from gateway.s1.settings import BreakerSettings, CapabilityConfig
from tests.gateway.s1.s1_support import Hang, caps, device, login, measure, running, wait_for


class Rig:
    def __init__(self, store: Store, broker: MosquittoBroker, settings: S1Settings) -> None:
        self.registry = CapabilityRegistry(store, "gw-t")
        self.units = UnitTree(
            "gw-t",
            root_quotas=settings.root_quotas,
            max_depth=settings.max_depth,
            breaker=BreakerSettings(),
            clock=__import__("amcp.runtime.clock", fromlist=["SystemClock"]).SystemClock(),
        )
        self.executor = CommandExecutor(login(broker, "gateway"), f"s1-test-{id(self)}")
        self.dispatcher = Dispatcher(self.registry, self.executor, self.units, settings)
        self.updates: list[IntentUpdate] = []

    async def emit(self, update: IntentUpdate) -> None:
        self.updates.append(update)

    async def run(self, capability: str, args: dict[str, object], **kw: object) -> IntentUpdate:
        intent = Intent(f"i-{len(self.updates)}", "", capability, dict(args), **kw)  # type: ignore[arg-type]
        return await self.dispatcher.run(intent, self.emit, correlation="corr-1")


@pytest.fixture
async def store(tmp_path: Path):
    async with Store(tmp_path / "s.sqlite3", site="gw-t") as s:
        yield s


async def _rig(store: Store, broker: MosquittoBroker, dev: str, **settings: object) -> Rig:
    s = S1Settings(capabilities=caps(dev), **settings)  # type: ignore[arg-type]
    rig = Rig(store, broker, s)
    await rig.registry.sync_config(s.capabilities)
    return rig


async def test_streams_progress_partials_then_the_final_answer(
    store: Store, broker: MosquittoBroker, topic: str
) -> None:
    dev = device(broker, f"{topic}-dev", {"measure": measure})
    rig = await _rig(store, broker, dev.device)
    async with running(dev.run(), rig.executor.run(ChildContext("x"))):
        await dev.subscribed.wait()
        await rig.executor.wait_connected(10)
        final = await rig.run("sensor.measure", {"n": 3})
    states = [u.state for u in rig.updates]
    assert states[0] == "accepted"
    assert states[-1] == "done"
    assert final.data == {"sum": 3}
    assert [u.data for u in rig.updates if u.state == "result"] == [
        {"sample": 0},
        {"sample": 1},
        {"sample": 2},
    ]
    assert [u.progress for u in rig.updates if u.state == "running"][-1] == pytest.approx(1.0)
    assert [u.seq for u in rig.updates] == list(range(len(rig.updates)))
    assert {u.intent_id for u in rig.updates} == {"i-0"}
    assert dev.received[0].correlation == "corr-1"


async def test_unresponsive_device_times_out_with_a_clear_error(
    store: Store, broker: MosquittoBroker, topic: str
) -> None:
    dev = device(broker, f"{topic}-mute", {}, silent=True)
    rig = await _rig(store, broker, dev.device, command_timeout=0.3)
    async with running(dev.run(), rig.executor.run(ChildContext("x"))):
        await dev.subscribed.wait()
        await rig.executor.wait_connected(10)
        final = await rig.run("sensor.measure", {"n": 2})
    assert final.state == "failed"
    assert final.code == "timeout"
    assert f"device {dev.device!r} did not answer command" in (final.error or "")
    assert "within 0.3 s" in (final.error or "")
    assert len(dev.received) == 1  # the command did reach the device


async def test_whole_intent_timeout_is_its_own_clear_failure(
    store: Store, broker: MosquittoBroker, topic: str
) -> None:
    hang = Hang()
    dev = device(broker, f"{topic}-hang", {"hang": hang})
    rig = await _rig(store, broker, dev.device)
    async with running(dev.run(), rig.executor.run(ChildContext("x"))):
        await dev.subscribed.wait()
        await rig.executor.wait_connected(10)
        final = await rig.run("sensor.hang", {}, timeout_ms=300)
        await asyncio.wait_for(hang.stopped.wait(), 10)  # the device was told to stop
    assert (final.state, final.code) == ("failed", "timeout")
    assert "timed out after 0.3 s" in (final.error or "")


async def test_cancelling_an_intent_stops_the_device_work(
    store: Store, broker: MosquittoBroker, topic: str
) -> None:
    hang = Hang()
    dev = device(broker, f"{topic}-busy", {"hang": hang})
    rig = await _rig(store, broker, dev.device)
    async with running(dev.run(), rig.executor.run(ChildContext("x"))):
        await dev.subscribed.wait()
        await rig.executor.wait_connected(10)
        job = asyncio.ensure_future(rig.run("sensor.hang", {}))
        await asyncio.wait_for(hang.started.wait(), 10)
        assert rig.dispatcher.running == ["i-0"]
        assert rig.dispatcher.cancel("i-0")
        final = await asyncio.wait_for(job, 10)
        await asyncio.wait_for(hang.stopped.wait(), 10)
        await wait_for(lambda: dev.cancelled)
    assert (final.state, final.code) == ("failed", "cancelled")
    assert rig.dispatcher.running == []
    assert dev.cancelled == [dev.received[0].id]
    assert not rig.dispatcher.cancel("i-0")  # nothing left to cancel


async def test_unknown_capability_and_bad_args_fail_before_any_device_is_asked(
    store: Store, broker: MosquittoBroker, topic: str
) -> None:
    rig = await _rig(store, broker, f"{topic}-nobody")
    unknown = await rig.run("no.such", {})
    assert (unknown.state, unknown.code) == ("failed", "unknown_capability")
    assert "'no.such'" in (unknown.error or "")
    bad = await rig.run("sensor.measure", {"n": "three"})
    assert (bad.state, bad.code) == ("failed", "bad_args")
    assert "must be integer" in (bad.error or "")


async def test_unit_rate_quota_refuses_intents_past_the_burst(
    store: Store, broker: MosquittoBroker, topic: str
) -> None:
    rig = await _rig(
        store,
        broker,
        f"{topic}-rate",
        root_quotas=QuotaSettings(max_rate=0.001, burst=1),
        command_timeout=0.2,
    )
    first = await rig.run("sensor.measure", {})
    second = await rig.run("sensor.measure", {})
    # admitted (it used the only token), then failed: the local broker is not connected
    assert (first.code, "local broker not connected" in (first.error or "")) == ("error", True)
    assert (second.state, second.code) == ("failed", "refused")
    assert "over its message rate" in (second.error or "")


async def test_a_flooding_device_trips_its_units_memory_quota(
    store: Store, broker: MosquittoBroker, topic: str
) -> None:
    async def flood(args: dict[str, object]):
        from gateway.s1 import Partial  # noqa: PLC0415

        for i in range(200):
            yield Partial({"blob": "x" * 400, "i": i})

    dev = device(broker, f"{topic}-flood", {"flood": flood})
    s = S1Settings(
        capabilities=[CapabilityConfig(name="flood", device=dev.device, unit="line")],
    )
    rig = Rig(store, broker, s)
    await rig.registry.sync_config(s.capabilities)
    line = rig.units.spawn("", "line", QuotaSettings(max_buffer_bytes=2000))
    gate = asyncio.Event()

    async def slow_emit(update: IntentUpdate) -> None:  # a cloud link that does not drain
        rig.updates.append(update)
        if update.state == "result":
            await gate.wait()

    async with running(dev.run(), rig.executor.run(ChildContext("x"))):
        await dev.subscribed.wait()
        await rig.executor.wait_connected(10)
        job = asyncio.ensure_future(rig.dispatcher.run(Intent("i-f", "", "flood", {}), slow_emit))
        # keep the link blocked until the device is through: 80 KB of replies then pile up
        # behind the first result, far past the 2000-byte quota, whatever the machine's load
        await wait_for(lambda: bool(dev.finished or dev.cancelled))
        gate.set()
        final = await asyncio.wait_for(job, 10)
    assert (final.state, final.code) == ("failed", "refused")
    assert "over its quota of 2000" in (final.error or "")
    assert line.buffered_bytes == 0  # released when the command ended


async def test_the_simulated_temperature_device_answers_its_capability(
    store: Store, broker: MosquittoBroker, topic: str
) -> None:
    from gateway.s1.simulated import sampling_capability, temperature_handlers  # noqa: PLC0415

    dev = device(broker, f"{topic}-temp", temperature_handlers())
    s = S1Settings(capabilities=[sampling_capability(dev.device)])
    rig = Rig(store, broker, s)
    await rig.registry.sync_config(s.capabilities)
    async with running(dev.run(), rig.executor.run(ChildContext("x"))):
        await dev.subscribed.wait()
        await rig.executor.wait_connected(10)
        final = await rig.run("temp.sample", {"n": 2, "interval": 0})
        refused = await rig.run("temp.sample", {"n": 2, "colour": "red"})
    assert (final.state, final.data["n"]) == ("done", 2)
    assert len([u for u in rig.updates if u.state == "result"]) == 2
    assert (refused.state, refused.code) == ("failed", "bad_args")


async def test_a_garbled_reply_is_counted_and_the_command_goes_on(
    store: Store, broker: MosquittoBroker, topic: str
) -> None:
    """A device answering with bytes that are not valid UTF-8 (msgspec raises its own
    UnicodeDecodeError for them) is counted as malformed; its next, good reply completes."""
    name = f"{topic}-raw"
    password = os.urandom(8).hex()
    broker.add_device(name, password)
    assert broker.device_port is not None
    rig = await _rig(store, broker, name)
    async with running(rig.executor.run(ChildContext("x"))):
        await rig.executor.wait_connected(10)
        async with aiomqtt.Client(
            broker.host, broker.device_port, username=name, password=password
        ) as dev:
            await dev.subscribe(f"devices/{name}/commands/+", qos=1)
            intent = asyncio.create_task(rig.run("sensor.measure", {"n": 1}))
            async with asyncio.timeout(10):
                command = await anext(aiter(dev.messages))
            command_id = command.topic.value.rsplit("/", 1)[1]
            reply_topic = topics.response(name, command_id)
            await dev.publish(reply_topic, b'{"id": "\xff", "state": "done"}', qos=1)
            good = {"id": command_id, "state": "done", "data": {"sum": 0}}
            await dev.publish(reply_topic, json.dumps(good).encode(), qos=1)
            async with asyncio.timeout(10):
                final = await intent
    assert (final.state, final.data) == ("done", {"sum": 0})
    assert rig.executor.malformed == 1
