"""The written-down semantics (docs/patterns.md), checked on interpreter, compiler and set alike."""

from __future__ import annotations

from typing import Any

import pytest

from amcp.goldrush import PatternSet, compile_query, event_from_reading, matches, parse, reduce
from amcp.goldrush import query as q
from amcp.wire.telemetry import Reading

CASES: list[tuple[str, dict[str, Any], bool]] = [
    # missing keys: every comparison is false, neq and not-in too (as in goldrush)
    ("temp > 90", {}, False),
    ("temp != 90", {}, False),
    ("temp not in [1, 2]", {}, False),
    ("not temp > 90", {}, True),
    ("missing(temp)", {}, True),
    ("exists(temp)", {"temp": None}, True),
    ("temp == null", {"temp": None}, True),
    ("temp == null", {}, False),
    # type mismatches never raise: no match
    ("temp > 90", {"temp": "hot"}, False),
    ("temp > 90", {"temp": [100]}, False),
    ("temp > 90", {"temp": {"v": 100}}, False),
    ("temp > 90", {"temp": None}, False),
    ("name > 'm'", {"name": 5}, False),
    ("name > 'm'", {"name": "z"}, True),
    ("temp != 90", {"temp": "90"}, True),
    ("temp == 90", {"temp": "90"}, False),
    # int versus float: numbers compare by value
    ("temp == 90", {"temp": 90.0}, True),
    ("temp == 90.0", {"temp": 90}, True),
    ("temp in [1, 2]", {"temp": 2.0}, True),
    ("temp >= 90", {"temp": 90.0}, True),
    ("big == 9007199254740993", {"big": 9007199254740992.0}, False),
    # bool is not a number
    ("flag == 1", {"flag": True}, False),
    ("flag == true", {"flag": 1}, False),
    ("flag == true", {"flag": True}, True),
    ("flag > 0", {"flag": True}, False),
    ("flag in [1]", {"flag": True}, False),
    ("flag != 1", {"flag": True}, True),
    # NaN equals nothing and orders with nothing
    ("temp == 1", {"temp": float("nan")}, False),
    ("temp > 1", {"temp": float("nan")}, False),
    ("temp < 1", {"temp": float("nan")}, False),
    ("temp != 1", {"temp": float("nan")}, True),
    # dotted paths; a step into a non-mapping is a missing field
    ("a.b.c == 1", {"a": {"b": {"c": 1}}}, True),
    ("a.b.c == 1", {"a": {"b": 5}}, False),
    ("a.b.c == 1", {"a": [1]}, False),
    ("missing(a.b.c)", {"a": {"b": "str"}}, True),
    # strings and lists
    ("tags contains 'hot'", {"tags": ["cold", "hot"]}, True),
    ("tags contains 1", {"tags": [1.0]}, True),
    ("tags contains 1", {"tags": [True]}, False),
    ("msg contains 'err'", {"msg": "an error"}, True),
    ("msg contains 1", {"msg": "1"}, False),
    ("id startswith 'pump'", {"id": "pump-7"}, True),
    ("id startswith 'pump'", {"id": 7}, False),
    ("id matches '^p.*7$'", {"id": "pump-7"}, True),
    ("id matches '^p'", {"id": ["p"]}, False),
    # two fields
    ("supply > return", {"supply": 60, "return": 45.5}, True),
    ("supply > return", {"supply": 60, "return": "45"}, False),
    ("supply == return", {"supply": 1, "return": 1.0}, True),
    ("supply != return", {"supply": 1}, False),
]


@pytest.mark.parametrize(("text", "event", "want"), CASES)
def test_semantics(text: str, event: dict[str, Any], want: bool) -> None:
    query = parse(text)
    assert isinstance(query, q.Cond)
    assert matches(query, event) is want
    assert matches(reduce(query), event) is want
    assert compile_query(query)(event) is want
    assert compile_query(reduce(query))(event) is want  # type: ignore[arg-type]
    rules = PatternSet.compile({"p": query})
    assert rules.match(event) == (["p"] if want else [])


def test_reading_as_event() -> None:
    reading = Reading(
        device="pump-1",
        boot="b1",
        seq=7,
        ts_ms=1000,
        values={"temp": 91.5, "device": "spoofed", "motor": {"rpm": 1200}},
    )
    event = event_from_reading(reading)
    assert event["device"] == "pump-1"
    assert matches(parse("device == 'pump-1' and temp > 90 and motor.rpm >= 1200"), event)
    assert matches(parse("values.device == 'spoofed' and seq == 7 and ts_ms == 1000"), event)
    assert matches(parse("boot == 'b1'"), event)
