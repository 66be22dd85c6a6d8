"""Fleet authoring in the cloud (cloud.authoring, cloud.control) on a real store file: values
checked with the field named before anything is written, targeted keys, the applied marks
from the sync watermarks, and the control socket the CLI uses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from amcp.fleet import LIMITS, ZONES, LimitValue, RowError, Target, decode_limit, decode_zone
from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.store.twins import DESIRED, Twins
from cloud.authoring import Authoring
from cloud.control import SOCKET_NAME, CloudControl, DesiredSet, LimitSet, Marks, ZoneSet, send
from cloud.control import AppliedQuery as Query


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "store.sqlite3", site="cloud") as s:
        yield s


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"rate": -1}, "rate"),
        ({"rate": 0, "burst": 5}, "rate"),
        ({"rate": "fast"}, "rate"),
        ({"rate": float("inf")}, "rate"),
        ({"rate": 5, "burst": 0}, "burst"),
        ({"rate": 5, "burst": 2.5}, "burst"),
        ({"burst": 5}, "rate"),
        ({"rate": 5, "brust": 5}, "brust"),
    ],
)
async def test_a_bad_limit_is_refused_with_its_field_and_nothing_is_written(
    store: Store, value: dict[str, object], field: str
) -> None:
    authoring = Authoring(store)
    before = await store.version()
    with pytest.raises(RowError) as caught:
        await authoring.set_limit("all", "device/flood", value)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert await store.version() == before


@pytest.mark.parametrize(
    ("target", "key", "field"),
    [
        ("everywhere", "device/x", "target"),
        ("zone/a b", "device/x", "zone"),
        ("gw/", "device/x", "gateway"),
        ("all", "gadget/x", "scope"),
        ("all", "device", "key"),
        ("all", "device/", "name"),
    ],
)
async def test_a_bad_target_or_key_is_refused(
    store: Store, target: str, key: str, field: str
) -> None:
    with pytest.raises(RowError) as caught:
        await Authoring(store).set_limit(target, key, {"rate": 1})
    assert caught.value.field == field


async def test_rows_are_written_under_their_target_and_read_back(store: Store) -> None:
    authoring = Authoring(store)
    fleet = await authoring.set_limit("all", "device/flood", {"rate": 5, "burst": 5})
    zone = await authoring.set_limit(Target.zone("north"), "capability/valve.open", {"rate": 1})
    one = await authoring.set_limit("gw/gw-1", "principal/alice", LimitValue(2.0, 3))
    assert (fleet.key, zone.key, one.key) == (
        "all/device/flood",
        "zone/north/capability/valve.open",
        "gw/gw-1/principal/alice",
    )
    assert fleet.version < zone.version < one.version
    stored = await store.items(LIMITS)
    assert decode_limit(stored["all/device/flood"]) == LimitValue(5.0, 5)
    assert decode_limit(stored["zone/north/capability/valve.open"]) == LimitValue(1.0, 1)
    assert set(await authoring.limits("zone/north")) == {"zone/north/capability/valve.open"}

    await authoring.set_zone("gw-1", "north")
    assert decode_zone((await store.items(ZONES))["gw-1"]).zone == "north"
    with pytest.raises(RowError, match="zone"):
        await authoring.set_zone("gw-1", "no/slash")

    await authoring.set_desired("gw/gw-1", "lamp", "mode", {"level": 3})
    assert await Twins(store).desired("lamp") == {"mode": {"level": 3}}
    with pytest.raises(RowError) as caught:
        await authoring.set_desired("all", "lamp", "mode", None)
    assert caught.value.field == "value"

    removed = await authoring.remove_limit("all", "device/flood")
    assert removed.removed
    assert removed.existed
    assert "all/device/flood" not in await store.items(LIMITS)
    again = await authoring.remove_limit("all", "device/flood")
    assert not again.existed
    assert again.version == removed.version  # nothing written


async def test_applied_counts_the_gateways_that_acknowledged_the_version(store: Store) -> None:
    authoring = Authoring(store, known_gateways=lambda: ["gw-1", "gw-2", "gw-3"])
    for gateway in ("gw-1", "gw-2"):  # gw-3 never connected: not a sync peer yet
        await store.hello(gateway, f"db-{gateway}")
    await authoring.set_zone("gw-1", "north")
    await authoring.set_zone("gw-3", "north")
    change = await authoring.set_limit("all", "device/flood", {"rate": 5, "burst": 5})

    applied = await authoring.applied(change)
    assert applied.gateways == ["gw-1", "gw-2", "gw-3"]
    assert applied.acknowledged == []
    assert applied.summary() == "applied on 0 of 3"

    await store.ack("gw-1", change.version)
    await store.ack("gw-2", change.version - 1)  # acknowledged only what came before
    applied = await authoring.applied(change)
    assert applied.acknowledged == ["gw-1"]
    assert applied.pending == ["gw-2", "gw-3"]
    assert applied.summary() == "applied on 1 of 3"

    north = await authoring.set_limit("zone/north", "device/flood", {"rate": 1})
    await store.ack("gw-1", north.version)
    zone_view = await authoring.applied(north)
    assert zone_view.gateways == ["gw-1", "gw-3"]
    assert zone_view.summary() == "applied on 1 of 2"

    receipt = await authoring.receipt(LIMITS, "zone/north/device/flood")
    assert receipt.version == north.version
    assert receipt.target == "zone/north"
    with pytest.raises(KeyError):
        await authoring.receipt(LIMITS, "all/device/none")

    marks = {m.gateway: m for m in await authoring.marks()}
    assert marks["gw-1"].acked == north.version
    assert marks["gw-1"].zone == "north"
    assert marks["gw-3"].acked == 0
    assert marks["gw-2"].zone is None


async def test_the_control_socket_writes_through_the_running_cloud(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / SOCKET_NAME
    control = CloudControl(path, Authoring(store))
    ctx = ChildContext("control")
    task = asyncio.create_task(control.run(ctx))
    try:
        async with asyncio.timeout(5):
            await ctx.wait_ready()
        assert path.stat().st_mode & 0o777 == 0o600

        answer = await asyncio.to_thread(
            send, path, LimitSet(target="all", key="device/flood", rate=5, burst=5)
        )
        assert answer.ok, answer
        assert answer.written is not None
        assert answer.written.key == "all/device/flood"
        assert answer.applied is not None
        assert answer.applied.summary() == "applied on 0 of 0"
        assert decode_limit((await store.items(LIMITS))["all/device/flood"]).rate == 5.0

        bad = await asyncio.to_thread(
            send, path, LimitSet(target="all", key="device/flood", rate=-3)
        )
        assert not bad.ok
        assert (bad.error, bad.field) == ("invalid", "rate")
        assert decode_limit((await store.items(LIMITS))["all/device/flood"]).rate == 5.0

        assert (await asyncio.to_thread(send, path, ZoneSet(gateway="gw-1", zone="n"))).ok
        desired = DesiredSet(target="gw/gw-1", device="lamp", field="on", value=True)
        assert (await asyncio.to_thread(send, path, desired)).ok
        assert msgspec.msgpack.decode((await store.items(DESIRED))["lamp/on"]) is True

        query = await asyncio.to_thread(send, path, Query(namespace=LIMITS, key="all/device/x"))
        assert query.error == "not_found"
        marks = await asyncio.to_thread(send, path, Marks())
        assert marks.ok
        assert marks.version == await store.version()

        # not a request at all: answered, and the server goes on
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"op": "nonsense"}\n')
        await writer.drain()
        line = await reader.readline()
        writer.close()
        assert b'"bad_request"' in line
        assert (await asyncio.to_thread(send, path, Marks())).ok
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not path.exists()
