"""Hypothesis strategies for random pattern queries and events that collide often.

Keys, numbers and strings come from small pools so that random queries and random events
actually talk about the same fields and values (1 vs 1.0 vs True, "a" vs "ab", nesting).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from amcp.goldrush import query as q

KEYS = ["a", "b", "temp", "in", "x y"]
REGEXES = ["^a", "b$", "a|b", "^$"]

finite_floats = st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, 2.0, -1.0, 1e16, 90.5])
numbers = st.one_of(st.integers(-2, 3), st.sampled_from([90, 2**53 + 1]), finite_floats)
strings = st.sampled_from(["", "a", "ab", "b", "ba", "A", "90"])
scalars: st.SearchStrategy[q.Scalar] = st.one_of(st.none(), st.booleans(), numbers, strings)
paths = st.lists(st.sampled_from(KEYS), min_size=1, max_size=2).map(tuple)

event_scalars = st.one_of(scalars, st.just(float("nan")), st.just(float("inf")))
event_values: st.SearchStrategy[Any] = st.recursive(
    event_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    ),
    max_leaves=6,
)
events: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.sampled_from(KEYS), event_values, max_size=5
)


def _cmp(draw_cls: type) -> st.SearchStrategy[q.Cond]:
    return st.builds(draw_cls, paths, scalars)


leaves: st.SearchStrategy[q.Cond] = st.one_of(
    *(_cmp(cls) for cls in (q.Eq, q.Neq, q.Gt, q.Gte, q.Lt, q.Lte)),
    st.builds(q.Exists, paths),
    st.builds(q.Missing, paths),
    st.builds(q.In, paths, st.lists(scalars, max_size=3).map(tuple)),
    st.builds(q.NotIn, paths, st.lists(scalars, max_size=3).map(tuple)),
    st.builds(q.Contains, paths, scalars),
    st.builds(q.Prefix, paths, strings),
    st.builds(q.Regex, paths, st.sampled_from(REGEXES)),
    st.builds(q.FieldCmp, st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte"]), paths, paths),
    st.builds(q.Null, st.booleans()),
)


def _compound(inner: st.SearchStrategy[q.Cond], min_size: int) -> st.SearchStrategy[q.Cond]:
    children = st.lists(inner, min_size=min_size, max_size=4).map(tuple)
    return st.one_of(
        st.builds(q.All, children), st.builds(q.Any, children), st.builds(q.Not, inner)
    )


conds: st.SearchStrategy[q.Cond] = st.recursive(
    leaves, lambda inner: _compound(inner, 0), max_leaves=10
)
"""Any condition, including empty and one-child ``all``/``any``."""

text_conds: st.SearchStrategy[q.Cond] = st.recursive(
    leaves, lambda inner: _compound(inner, 2), max_leaves=10
)
"""Conditions that have a text form (``all``/``any`` with two or more members)."""

# Patterns shaped like real rule sets, so the index really splits on them.
devices = st.sampled_from(["d1", "d2", "d3"])
realistic: st.SearchStrategy[q.Cond] = st.one_of(
    st.builds(
        lambda d, extra: q.All((q.Eq(("device",), d), *extra)),
        devices,
        st.lists(leaves, max_size=2),
    ),
    st.builds(
        lambda d, t: q.All((q.In(("device",), d), q.Gt(("temp",), t))),
        st.lists(devices, min_size=1, max_size=2).map(tuple),
        numbers,
    ),
    st.builds(
        lambda cls, t: cls(("temp",), t), st.sampled_from([q.Gt, q.Gte, q.Lt, q.Lte]), numbers
    ),
    conds,
)
realistic_events = st.builds(
    lambda base, d, t: {**base, "device": d, "temp": t},
    events,
    st.one_of(devices, scalars),
    st.one_of(numbers, scalars, st.just(float("nan"))),
)
