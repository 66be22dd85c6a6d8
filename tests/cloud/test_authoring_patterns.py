"""Patterns and policy bundles authored in the cloud (cloud.authoring, cloud.control) on a
real store file: a rule is checked (its GoldRush compiled) before anything is written, rows
go under their target, receipts and applied marks follow the key's target, and the one
control socket serves the policy requests `cybernetic policy` sends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from amcp import bundles
from amcp.crypto.keys import Ed25519Signer, now_ms
from amcp.fleet import FLEET_PATTERNS, RowError
from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.wire.messages import PolicyBundle
from cloud.authoring import Authoring, PolicyConflictError
from cloud.control import (
    SOCKET_NAME,
    AppliedQuery,
    CloudControl,
    PatternRemove,
    PatternSet,
    PatternsList,
    PoliciesRead,
    PoliciesWrite,
    send,
)

HOT = {"type": "pattern", "when": "temp > 80 => alert"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "store.sqlite3", site="cloud") as s:
        yield s


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"type": "pattern", "when": "temp > > 80"}, "when"),
        ({"type": "pattern"}, "when"),
        ({"type": "pattern", "when": "temp >"}, "when"),
        ({"type": "situation", "when": "exists(fired."}, "when"),
        ({"type": "window", "pattern": "hot", "count": 0, "within_s": 10}, "count"),
        ({"type": "window", "pattern": "hot", "count": 3}, "within_s"),
        ({"type": "window", "count": 3, "within_s": 10}, "pattern"),
        ({"type": "rule", "when": "temp > 1"}, "type"),
        (["temp > 1"], "rule"),
        (b"{not json", "rule"),
    ],
)
async def test_a_bad_rule_is_refused_with_its_error_and_nothing_is_written(
    store: Store, document: object, field: str
) -> None:
    before = await store.version()
    with pytest.raises(RowError) as caught:
        await Authoring(store).set_pattern("zone/north", "hot", document)
    assert caught.value.field == field
    assert await store.version() == before
    assert await store.items(FLEET_PATTERNS) == {}


async def test_a_parse_error_names_its_position(store: Store) -> None:
    with pytest.raises(RowError) as caught:
        await Authoring(store).set_pattern("all", "hot", {"type": "pattern", "when": "t > > 1"})
    assert "ParseError" in str(caught.value)
    assert "line 1, column 5" in str(caught.value)


async def test_bad_targets_and_ids_are_refused(store: Store) -> None:
    authoring = Authoring(store)
    for target, rule, field in [
        ("everywhere", "hot", "target"),
        ("zone/a b", "hot", "zone"),
        ("all", "", "rule"),
        ("all", " hot", "rule"),
    ]:
        with pytest.raises(RowError) as caught:
            await authoring.set_pattern(target, rule, HOT)
        assert caught.value.field == field, (target, rule)
    assert await store.items(FLEET_PATTERNS) == {}


async def test_patterns_are_written_under_their_target_and_acknowledged_by_its_gateways(
    store: Store,
) -> None:
    authoring = Authoring(store, known_gateways=lambda: ["gw-1", "gw-2", "gw-3"])
    await store.hello("gw-1", "db-gw-1")
    await authoring.set_zone("gw-1", "north")
    await authoring.set_zone("gw-2", "north")
    written = await authoring.set_pattern("zone/north", "hot", HOT)
    assert (written.namespace, written.key, written.target) == (
        FLEET_PATTERNS,
        "zone/north/hot",
        "zone/north",
    )
    window = {"type": "window", "pattern": "hot", "count": 3, "within_s": 10}
    await authoring.set_pattern("gw/gw-3", "hot3", msgspec.json.encode(window))
    raw = (await store.items(FLEET_PATTERNS))["zone/north/hot"]
    assert msgspec.json.decode(raw) == HOT
    assert await authoring.patterns("zone/north") == {"zone/north/hot": HOT}
    assert set(await authoring.patterns()) == {"zone/north/hot", "gw/gw-3/hot3"}

    applied = await authoring.applied(written)
    assert (applied.gateways, applied.pending) == (["gw-1", "gw-2"], ["gw-1", "gw-2"])
    await store.ack("gw-1", written.version)
    receipt = await authoring.receipt(FLEET_PATTERNS, "zone/north/hot")
    assert receipt.target == "zone/north"
    assert (await authoring.applied(receipt)).summary() == "applied on 1 of 2"

    gone = await authoring.remove_pattern("zone/north", "hot")
    assert gone.removed
    assert gone.existed
    assert await authoring.patterns("zone/north") == {}
    again = await authoring.remove_pattern("zone/north", "hot")
    assert not again.existed


def _bundle(version: int) -> bytes:
    signer = Ed25519Signer.generate("cloud")
    body = PolicyBundle(
        name="cold", version=version, expires_ms=now_ms() + 86_400_000, source="allow all"
    )
    return bundles.sign(body, signer)


async def test_policy_rows_are_written_only_over_what_was_read(store: Store) -> None:
    authoring = Authoring(store)
    empty = bundles.rows_digest({})
    one = _bundle(1)
    rows = [(bundles.NAMESPACE, "cold@*", one), (bundles.HISTORY_NAMESPACE, "cold/1", one)]
    assert await authoring.write_policies(rows, empty) == 2
    with pytest.raises(PolicyConflictError):  # read before the write above: stale
        await authoring.write_policies([(bundles.NAMESPACE, "cold@*", _bundle(2))], empty)
    with pytest.raises(RowError) as caught:
        await authoring.write_policies([("limits", "all/device/x", one)], empty)
    assert caught.value.field == "namespace"
    with pytest.raises(RowError) as caught:
        await authoring.write_policies([(bundles.NAMESPACE, "x@*", b"junk")], empty)
    assert caught.value.field == "value"
    assert (await authoring.policy_rows())[bundles.NAMESPACE] == {"cold@*": one}


async def test_the_control_socket_serves_patterns_and_policies(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / SOCKET_NAME
    control = CloudControl(path, Authoring(store))
    ctx = ChildContext("control")
    task = asyncio.create_task(control.run(ctx))
    try:
        async with asyncio.timeout(5):
            await ctx.wait_ready()

        ok = await asyncio.to_thread(send, path, PatternSet(target="all", rule="hot", document=HOT))
        assert ok.ok, ok
        assert ok.written is not None
        assert ok.written.key == "all/hot"
        bad = await asyncio.to_thread(
            send, path, PatternSet(target="all", rule="cold", document={"type": "pattern"})
        )
        assert (bad.ok, bad.error, bad.field) == (False, "invalid", "when")
        listed = await asyncio.to_thread(send, path, PatternsList())
        assert listed.patterns == {"all/hot": HOT}
        query = await asyncio.to_thread(
            send, path, AppliedQuery(namespace=FLEET_PATTERNS, key="all/hot")
        )
        assert query.ok
        assert query.written is not None
        assert query.written.target == "all"
        removed = await asyncio.to_thread(send, path, PatternRemove(target="all", rule="hot"))
        assert removed.ok
        assert removed.written is not None
        assert removed.written.removed

        # the policy requests, formerly on policy.sock
        read = await asyncio.to_thread(send, path, PoliciesRead())
        assert read.rows == {bundles.NAMESPACE: {}, bundles.HISTORY_NAMESPACE: {}}
        data = base64.b64encode(_bundle(1)).decode()
        write = PoliciesWrite(
            rows=[(bundles.NAMESPACE, "cold@*", data)], expect=bundles.rows_digest({})
        )
        wrote = await asyncio.to_thread(send, path, write)
        assert (wrote.ok, wrote.stored) == (True, 1)
        stale = await asyncio.to_thread(send, path, write)
        assert (stale.ok, stale.error) == (False, "conflict")
        unbased = PoliciesWrite(rows=[(bundles.NAMESPACE, "x@*", "!!")], expect="")
        refused = await asyncio.to_thread(send, path, unbased)
        assert (refused.ok, refused.error, refused.field) == (False, "invalid", "value")
        read = await asyncio.to_thread(send, path, PoliciesRead())
        assert read.rows is not None
        assert read.rows[bundles.NAMESPACE] == {"cold@*": data}
        assert not (tmp_path / "policy.sock").exists()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
