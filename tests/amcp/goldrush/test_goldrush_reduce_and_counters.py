"""Reduction examples (goldrush's own glc_lib tests and ours), counters, actions and errors."""

from __future__ import annotations

from typing import Any

import pytest

from amcp.goldrush import (
    ParseError,
    PatternSet,
    QueryError,
    matches,
    parse,
    reduce,
    to_text,
)
from amcp.goldrush import query as q
from amcp.goldrush.codegen import conjuncts
from amcp.goldrush.index import Planner, _EqPlan, _ThresholdPlan


def red(text: str) -> str:
    return to_text(reduce(parse(text)))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # goldrush glc_lib tests
        ("(a == 1)", "a == 1"),  # all_one / any_one
        ("a == 1 and a == 1", "a == 1"),  # all_equiv
        ("a == 1 or a == 1", "a == 1"),  # any_equiv
        ("a == 1 and (b == 2 and c == 3)", "a == 1 and b == 2 and c == 3"),  # all_nest
        ("a == 1 or (b == 2 or c == 3)", "a == 1 or b == 2 or c == 3"),  # any_nest
        ("(a == 1 and b == 2) or (a == 1 and c == 3)", "a == 1 and (b == 2 or c == 3)"),
        # constants
        ("a == 1 and true", "a == 1"),
        ("a == 1 and false", "false"),
        ("a == 1 or true", "true"),
        ("not true", "false"),
        # absorption
        ("a == 1 and (a == 1 or b == 2)", "a == 1"),
        ("a == 1 or (a == 1 and b == 2)", "a == 1"),
        # one field, several tests
        ("x > 5 and x > 9 and x >= 9", "x > 9"),
        ("x < 5 and x <= 2", "x <= 2"),
        ("x > 9 and x < 3", "false"),
        ("x >= 3 and x <= 3", "x >= 3 and x <= 3"),
        ("x > 3 and x < 3", "false"),
        ("x == 5 and x > 3 and x != 4 and exists(x)", "x == 5"),
        ("x == 5 and x > 7", "false"),
        ("x == 'a' and x == 'b'", "false"),
        ("x == 1 and x == 1.0", "x == 1"),
        ("x > 1 and exists(x)", "x > 1"),
        ("x > 1 and missing(x)", "false"),
        ("x in [1]", "x == 1"),
        ("x not in [1]", "x != 1"),
        ("x in []", "false"),
        ("x not in []", "exists(x)"),
        ("not not x == 1", "x == 1"),
        ("not exists(x)", "missing(x)"),
        # conjuncts cheapest first, author order kept within a rank
        (
            "name matches 'a' and temp > 3 and device == 'd'",
            'device == "d" and temp > 3 and name matches "a"',
        ),
    ],
)
def test_reductions(text: str, want: str) -> None:
    assert red(text) == want


def test_goldrush_common_step_left_out_because_it_changes_meaning() -> None:
    # glc_lib's all_common test reduces this to a==1 and b==2 and c==3; {a: 1} proves it wrong.
    query = parse("(a == 1 or b == 2) and (a == 1 or c == 3)")
    assert matches(reduce(query), {"a": 1}) is True


def test_index_splits_on_equality_then_thresholds() -> None:
    items = [
        (f"d{i}", conjuncts(parse(f"device == 'd{i % 50}' and temp > {i}"))) for i in range(200)
    ]
    plan = Planner().plan(items)  # type: ignore[arg-type]
    assert isinstance(plan, _EqPlan)
    assert plan.path == ("device",)
    assert len(plan.table) == 50
    thresholds = [(f"t{i}", conjuncts(parse(f"temp > {i} and cpu > 1"))) for i in range(50)]
    tplan = Planner().plan(thresholds)  # type: ignore[arg-type]
    assert isinstance(tplan, _ThresholdPlan)


def test_counters_and_actions() -> None:
    seen: list[tuple[str, Any]] = []

    def alert(event: Any, pid: str) -> None:
        seen.append((pid, event["temp"]))

    def broken(event: Any, pid: str) -> None:
        raise RuntimeError("boom")

    rules = PatternSet.compile(
        {"hot": "temp > 90 => alert, broken", "cold": "temp < 0", "never": "false"},
        actions={"alert": alert, "broken": broken},
    )
    assert sorted(rules.handle({"temp": 95})) == ["hot"]
    assert rules.handle({"temp": 50}) == []
    assert rules.handle({"temp": -3}) == ["cold"]
    assert rules.handle({"temp": 99}) == ["hot"]
    assert seen == [("hot", 95), ("hot", 99)]
    hot = rules.counters("hot")
    assert (hot.input, hot.matched, hot.filtered) == (4, 2, 2)
    assert (hot.action_runs, hot.action_errors) == (4, 2)
    assert hot.action_ms >= 0
    assert rules.counters("never").matched == 0
    assert rules.counters("cold").input == 4

    swapped = PatternSet.compile({"hot": "temp > 80", "new": "temp > 0"}, carry=rules)
    swapped.match({"temp": 85})
    assert swapped.counters("hot").input == 5
    assert swapped.counters("hot").matched == 3
    assert swapped.counters("new").input == 1
    assert "cold" not in swapped
    assert len(swapped) == 2


def test_bad_patterns_name_themselves() -> None:
    with pytest.raises(ParseError) as parse_info:
        PatternSet.compile({"ok": "a > 1", "bad": "a >"})
    assert parse_info.value.pattern_id == "bad"
    assert parse_info.value.position == 3
    with pytest.raises(QueryError) as query_info:
        PatternSet.compile({"x": "a > 1 => nope"})
    assert query_info.value.pattern_id == "x"
    assert "nope" in str(query_info.value)
    with pytest.raises(QueryError):
        PatternSet.compile({"r": q.Regex(("a",), "(")})


def test_empty_set() -> None:
    rules = PatternSet.compile({})
    assert rules.match({"a": 1}) == []
    assert rules.input == 1
