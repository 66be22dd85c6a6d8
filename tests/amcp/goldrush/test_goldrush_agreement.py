"""Properties: compiler, indexed set and reduction agree exactly with the reference interpreter."""

from __future__ import annotations

from typing import Any

from goldrush_strategies import conds, events, realistic, realistic_events
from hypothesis import given
from hypothesis import strategies as st

from amcp.goldrush import PatternSet, compile_query, matches, reduce
from amcp.goldrush import query as q


@given(conds, st.lists(events, min_size=1, max_size=5))
def test_compiled_pattern_agrees_with_interpreter(cond: q.Cond, evs: list[dict[str, Any]]) -> None:
    fn = compile_query(cond)
    for ev in evs:
        assert fn(ev) is matches(cond, ev), (cond, ev)


@given(conds, st.lists(events, min_size=1, max_size=5))
def test_reduction_never_changes_meaning(cond: q.Cond, evs: list[dict[str, Any]]) -> None:
    reduced = reduce(cond)
    for ev in evs:
        assert matches(reduced, ev) is matches(cond, ev), (cond, reduced, ev)


@given(conds)
def test_reduction_is_idempotent(cond: q.Cond) -> None:
    once = reduce(cond)
    assert q.encode(reduce(once)) == q.encode(once)


@given(
    st.lists(realistic, max_size=25),
    st.lists(realistic_events, min_size=1, max_size=8),
    st.sampled_from([1, 2, 6]),
)
def test_indexed_set_agrees_with_interpreter(
    patterns: list[q.Cond], evs: list[dict[str, Any]], leaf_size: int
) -> None:
    named = {f"p{i}": p for i, p in enumerate(patterns)}
    rules = PatternSet.compile(named, leaf_size=leaf_size)
    for ev in evs:
        got = rules.match(ev)
        assert len(got) == len(set(got)), got
        want = {pid for pid, p in named.items() if matches(p, ev)}
        assert set(got) == want, (ev, named)


@given(st.lists(conds, max_size=12), st.lists(events, min_size=1, max_size=5))
def test_indexed_set_of_arbitrary_queries(
    patterns: list[q.Cond], evs: list[dict[str, Any]]
) -> None:
    named = {f"p{i}": p for i, p in enumerate(patterns)}
    rules = PatternSet.compile(named, leaf_size=1)
    for ev in evs:
        assert set(rules.match(ev)) == {pid for pid, p in named.items() if matches(p, ev)}


@given(conds)
def test_ast_roundtrips_through_json(cond: q.Cond) -> None:
    data = q.encode(cond)
    assert q.encode(q.decode(data)) == data
