"""Cloud ↔ gateway S1 over a real Mosquitto with real envelopes: registry, routing, cancel."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiomqtt

from amcp.runtime.supervisor import ChildContext
from amcp.wire import topics
from amcp.wire.messages import CapabilityAnnouncement, CapabilitySpec
from cloud.s1 import CloudS1Settings
from cybernetic.mosquitto import MosquittoBroker
from gateway.s1 import S1Settings, read_tree
from tests.gateway.s1.s1_support import (
    Deployment,
    Hang,
    caps,
    device,
    make_deployment,
    measure,
    running,
    wait_for,
)


async def _start(d: Deployment) -> list[object]:
    return [d.s1.supervisor.run(ChildContext("s1")), d.cloud.run(ChildContext("cloud"))]


async def _wait_registered(d: Deployment, capability: str) -> None:
    await wait_for(lambda: d.cloud.connected)  # its store is open from then on
    async with asyncio.timeout(10):
        while not await d.cloud.registry.owners(capability):  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(0.05)


async def test_an_intent_streams_partials_and_its_answer_with_its_correlation_id(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    dev = device(broker, f"{topic}-sensor", {"measure": measure})
    settings = S1Settings(topic_prefix=topic, capabilities=caps(dev.device), tree_interval=0.1)
    d = make_deployment(broker, tmp_path, topic, "gw-a", settings)
    async with running(dev.run(), *await _start(d)):
        await _wait_registered(d, "sensor.measure")
        routed = [r async for r in d.cloud.router.stream("sensor.measure", {"n": 4}, 10)]
        await wait_for(d.s1.tree_path.exists)
    updates = [r.update for r in routed]
    intent_id = updates[0].intent_id
    assert [u.state for u in updates][:2] == ["accepted", "running"]
    assert [u.data for u in updates if u.state == "result"] == [{"sample": i} for i in range(4)]
    assert (updates[-1].state, updates[-1].data) == ("done", {"sum": 6})
    assert {r.correlation_id for r in routed} == {intent_id}
    assert {r.gateway for r in routed} == {"gw-a"}
    assert {u.intent_id for u in updates} == {intent_id}
    assert dev.received[0].correlation == intent_id  # down to the device, too
    assert read_tree(d.s1.tree_path)["gateway"] == "gw-a"


async def test_cancelling_an_intent_from_the_cloud_stops_its_work(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    hang = Hang()
    dev = device(broker, f"{topic}-busy", {"hang": hang})
    d = make_deployment(
        broker,
        tmp_path,
        topic,
        "gw-b",
        S1Settings(topic_prefix=topic, capabilities=caps(dev.device)),
    )
    async with running(dev.run(), *await _start(d)):
        await _wait_registered(d, "sensor.hang")
        stream = d.cloud.router.send("sensor.hang", {}, 30)
        seen = [await anext(stream), await anext(stream)]
        await asyncio.wait_for(hang.started.wait(), 10)
        await stream.aclose()  # the caller walks away: the router cancels on the gateway
        await asyncio.wait_for(hang.stopped.wait(), 10)
        await wait_for(lambda: not d.s1.dispatcher.running)
    assert [u.state for u in seen] == ["accepted", "running"]
    assert dev.cancelled == [dev.received[0].id]
    assert d.s1.dispatcher.failed == {"cancelled": 1}


async def test_an_unknown_capability_and_a_silent_gateway_fail_clearly(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    settings = CloudS1Settings(topic_prefix=topic, client_id=f"c-{topic}", grace=0.2)
    d = make_deployment(broker, tmp_path, topic, "gw-c", S1Settings(), cloud_settings=settings)
    async with running(d.cloud.run(ChildContext("cloud"))):  # no gateway running at all
        await wait_for(lambda: d.cloud.connected)
        unknown = [u async for u in d.cloud.router.send("x.y", {}, 1)]
        silent = [u async for u in d.cloud.router.send("x.y", {}, 0.2, gateway="gw-c")]
    assert (unknown[-1].state, unknown[-1].code) == ("failed", "unknown_capability")
    assert (silent[-1].state, silent[-1].code) == ("failed", "timeout")
    assert silent[-1].error == "no answer from gateway 'gw-c' within 0.2 s"


async def test_announced_capabilities_reach_the_cloud_and_older_never_replace_newer(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    dev = device(broker, f"{topic}-d", {})
    d = make_deployment(
        broker,
        tmp_path,
        topic,
        "gw-d",
        S1Settings(topic_prefix=topic, capabilities=caps(dev.device)),
    )
    async with running(*await _start(d)):
        await _wait_registered(d, "sensor.measure")
        held = await d.cloud.registry.announcement("gw-d")
        assert held is not None
        [owner] = await d.cloud.registry.owners("sensor.measure")
        assert (owner.gateway, owner.spec.cost, owner.spec.owner) == (
            "gw-d",
            1.0,
            f"device:{dev.device}",
        )
        assert owner.spec.input_schema["properties"]["n"]["type"] == "integer"
        # the gateway (same link key) publishes an older announcement, live and retained
        cap_topic = topics.capabilities(topic, "gw-d")
        older = CapabilityAnnouncement(
            "gw-d", held.version - 1, ["evil.cap"], [CapabilitySpec("evil.cap")]
        )
        newer = CapabilityAnnouncement(
            "gw-d", held.version + 1, ["sensor.v2"], [CapabilitySpec("sensor.v2")]
        )
        async with aiomqtt.Client(
            broker.host, broker.port, username="gateway", password=broker.password("gateway")
        ) as client:
            for retain in (False, True):
                await client.publish(
                    cap_topic, d.links.gateway.seal(older, cap_topic), qos=1, retain=retain
                )
            await client.publish(cap_topic, d.links.gateway.seal(newer, cap_topic), qos=1)
            await _wait_registered(d, "sensor.v2")
            await client.publish(
                cap_topic, d.links.gateway.seal(older, cap_topic), qos=1, retain=True
            )
            with contextlib.suppress(TimeoutError):  # give it every chance to (wrongly) apply
                async with asyncio.timeout(0.5):
                    await _wait_registered(d, "evil.cap")
        final = await d.cloud.registry.announcement("gw-d")
        assert await d.cloud.registry.owners("evil.cap") == []
    assert final is not None
    assert (final.version, final.capabilities) == (held.version + 1, ["sensor.v2"])


async def test_a_restarted_cloud_learns_capabilities_from_the_retained_announcement(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    d = make_deployment(
        broker,
        tmp_path,
        topic,
        "gw-e",
        S1Settings(topic_prefix=topic, capabilities=caps(f"{topic}-x")),
    )
    async with running(d.s1.supervisor.run(ChildContext("s1"))):
        await wait_for(lambda: d.s1.server.announced_version > 0)
    # the gateway is gone; a cloud starting now still finds its retained announcement
    async with running(d.cloud.run(ChildContext("cloud"))):
        await _wait_registered(d, "sensor.hang")


async def test_a_zombie_devices_capability_moves_to_its_standby_and_the_cloud_sees_it(
    broker: MosquittoBroker, topic: str, tmp_path: Path
) -> None:
    primary = device(broker, f"{topic}-primary", {"measure": measure})
    standby = device(broker, f"{topic}-standby", {"measure": measure})
    settings = S1Settings(
        topic_prefix=topic, capabilities=caps(primary.device, standby=[standby.device])
    )
    d = make_deployment(broker, tmp_path, topic, "gw-z", settings)
    async with running(primary.run(), standby.run(), *await _start(d)):
        await _wait_registered(d, "sensor.measure")
        first = [r async for r in d.cloud.router.stream("sensor.measure", {"n": 1}, 10)]
        assert first[-1].update.state == "done"
        # no healthy standby: the work stays where it is
        assert not d.s1.reassign(primary.device, "device", healthy=lambda _: False)
        # S2 declares the primary a zombie: its capabilities go to the standby
        assert d.s1.reassign(primary.device, "device", healthy=lambda dev: dev != primary.device)
        assert not d.s1.reassign(primary.device, "device", healthy=lambda _: True)  # moved

        async def cloud_owner() -> str:
            return (await d.cloud.registry.owners("sensor.measure"))[0].spec.owner

        async with asyncio.timeout(10):
            while await cloud_owner() != f"device:{standby.device}":  # noqa: ASYNC110 - polls the store
                await asyncio.sleep(0.05)
        record = await d.s1.registry.get("sensor.measure")
        assert record is not None
        assert (record.device, record.standby) == (standby.device, [primary.device])
        second = [r async for r in d.cloud.router.stream("sensor.measure", {"n": 2}, 10)]
    assert second[-1].update.state == "done"
    assert len(primary.received) == 1  # only the first intent
    assert len(standby.received) == 1  # the second one
    assert not d.s1.reassign("some-other-device", "device", healthy=lambda _: True)
    assert not d.s1.reassign(primary.device, "unit", healthy=lambda _: True)
