"""The causality graph on both engines: what the reading store writes for each event, the
mitigation S4 proposes for an alert, and a trace from an enforcement back to the reading that
fired the rule (cloud.causality, cloud.mitigations, cloud.trace)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from amcp.wire.telemetry import EventRecord, Reading
from cloud.causality import event_id, policy_id, reading_id
from cloud.llm.engine import Engine as LlmEngine
from cloud.llm.settings import LlmSettings
from cloud.mitigations import Mitigations, proposals
from cloud.readings import ReadingStore, StoreBatch
from cloud.storage.engine import Tx
from cloud.storage.postgres import PostgresEngine
from cloud.storage.sqlite import SqliteEngine
from cloud.trace import Trace, trace

GW = "gw-1"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ReadingStore]:
    engine = (
        SqliteEngine(tmp_path / "cloud.sqlite3")
        if request.param == "sqlite"
        else PostgresEngine(request.getfixturevalue("pg_dsn"))
    )
    s = ReadingStore(engine)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def llm() -> AsyncIterator[LlmEngine]:
    engine = LlmEngine.from_settings(LlmSettings(), environ={})
    yield engine
    await engine.aclose()


def _reading(seq: int, **values: Any) -> Reading:
    return Reading("door-1", "b1", seq, 1_000 + seq, values)


def _alert(seq: int) -> EventRecord:
    attrs = {"rule": "tamper", "kind": "pattern", "reading": {"boot": "b1", "seq": seq}}
    return EventRecord("rules.tamper", 1_000 + seq, "door-1", "warning", attrs, urgent=True)


def _edges(t: Trace) -> set[tuple[str, str, str]]:
    return {(e.src, e.kind, e.dst) for e in t.edges}


async def _trace(store: ReadingStore, node: str, **kw: Any) -> Trace:
    found = await store.engine.read(lambda tx: trace(tx, node, **kw))
    assert found is not None
    return found


async def test_an_enforcement_traces_back_to_the_reading_that_fired_the_rule(
    store: ReadingStore, llm: LlmEngine
) -> None:
    alert = _alert(7)
    await store.store_many([StoreBatch(GW, [_reading(7, opened=1)], [alert])], 10)
    s4 = Mitigations(store.engine, llm)
    assert await s4.round() == 1
    ((mid, proposal, alerts),) = await store.engine.read(proposals)
    assert alerts == 1
    assert proposal["action"] == "quarantine"  # tamper is a security event (the planner's rule)
    assert 'device == "door-1"' in proposal["policy"]
    # an operator pushed the proposal as policy version 3 with --cause; the gateway applied it
    # and its first denial is the enforcement (gateway events, as the gateway writes them)
    name = "mitigate-tamper-door_1"
    applied = EventRecord(
        "policy.bundle.applied",
        2_000,
        GW,
        "info",
        {"policy": name, "version": 3, "zone": "", "causation": mid},
    )
    enforced = EventRecord(
        "policy.enforced",
        2_100,
        "door-1",
        "info",
        {"policy": name, "version": 3, "rule": "tamper_door_1", "boot": "b1", "seq": 8},
    )
    await store.store_many([StoreBatch(GW, [], [applied, enforced])], 20)

    t = await _trace(store, event_id(GW, enforced))
    by_id = {n.id: n for n in t.nodes}
    policy = policy_id(name, 3)
    alert_node = event_id(GW, alert)
    assert _edges(t) == {
        (policy, "enforced", event_id(GW, enforced)),
        (reading_id("door-1", "b1", 8), "matched", event_id(GW, enforced)),
        (mid, "pushed", policy),
        (alert_node, "proposed", mid),
        (reading_id("door-1", "b1", 7), "matched", alert_node),
    }
    fired = by_id[reading_id("door-1", "b1", 7)]
    assert fired.attrs["values"] == {"opened": 1}  # the reading itself, from the store
    assert fired.attrs["gateway"] == GW
    assert by_id[alert_node].kind == "alert"
    assert by_id[mid].kind == "mitigation"
    # the denied reading was never stored: known by name only
    assert "values" not in by_id[reading_id("door-1", "b1", 8)].attrs
    # forward from the reading: what it led to, down to the enforcement
    ahead = await _trace(store, reading_id("door-1", "b1", 7), direction="forward")
    assert event_id(GW, enforced) in {n.id for n in ahead.nodes}
    assert event_id(GW, applied) in {n.id for n in ahead.nodes}


async def test_a_resent_event_is_one_node_and_repeated_alerts_share_a_proposal(
    store: ReadingStore, llm: LlmEngine
) -> None:
    first, second = _alert(1), _alert(2)
    batch = StoreBatch(GW, [_reading(1, opened=1)], [first])
    await store.store_many([batch], 10)
    await store.store_many([batch], 11)  # a retry of the same batch after a lost ack
    await store.store_many([StoreBatch(GW, [_reading(2, opened=1)], [second])], 12)

    def count(tx: Tx) -> int:
        return int(tx.execute("SELECT COUNT(*) FROM context_graph_nodes")[0][0])

    assert await store.engine.read(count) == 2
    s4 = Mitigations(store.engine, llm)
    assert await s4.round() == 2
    assert await s4.round() == 0  # answered alerts are not asked again
    ((_mid, _proposal, alerts),) = await store.engine.read(proposals)
    assert alerts == 2  # the same device tampered twice: one proposal answers both


async def test_events_that_are_not_alerts_get_no_proposal_and_unknown_ids_no_trace(
    store: ReadingStore, llm: LlmEngine
) -> None:
    info = EventRecord("s2.lease.granted", 5, "valve-1", "info", {"token": 1, "holder": "x"})
    await store.store_many([StoreBatch(GW, [], [info])], 10)
    assert await Mitigations(store.engine, llm).round() == 0
    t = await _trace(store, event_id(GW, info))
    assert [n.kind for n in t.nodes] == ["event"]
    assert t.edges == []
    assert await store.engine.read(lambda tx: trace(tx, "event:0000000000000000")) is None
    assert await store.engine.read(lambda tx: trace(tx, "reading:nope")) is not None  # by name


async def test_an_alert_with_no_automatic_mitigation_is_answered_once_with_notify(
    store: ReadingStore, llm: LlmEngine
) -> None:
    pain = EventRecord("algedonic", 9, "pump-1", "critical", {"valence": "pain"}, urgent=True)
    await store.store_many([StoreBatch(GW, [], [pain])], 10)
    s4 = Mitigations(store.engine, llm)
    assert await s4.round() == 1
    ((_mid, proposal, _alerts),) = await store.engine.read(proposals)
    assert proposal["action"] == "notify"
    assert proposal["policy"] == ""
    assert await s4.round() == 0
