"""Hypothesis strategies for random policies and readings (shared by the wasm tests)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from amcp.wire.telemetry import Reading
from wasm import ast
from wasm.decision import Decision

FIELDS = ["a", "b", "c", "odd name", "hour"]
DEVICES = ["pump-1", "pump-2", "valve", "x", ""]
ZONES = {"pump-1": "cold", "pump-2": "cold", "valve": "yard"}
PATTERNS = ["pump-1", "pump-*", "*", "[pv]*", "", "cold", "yard", "y?rd"]

numbers = st.one_of(
    st.integers(-2, 30).map(float),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 0.5, 1e308, 5e-324]),
)
num_leaf = st.one_of(
    numbers.map(ast.Num),
    st.sampled_from(FIELDS).map(ast.Field),
    st.sampled_from([ast.Clock("hour"), ast.Clock("minute"), ast.Clock("weekday")]),
    st.just(ast.Lag()),
    st.sampled_from([1, 1000, 60_000, 3_600_000]).map(ast.Rate),
)
num_expr = st.recursive(
    num_leaf,
    lambda c: st.one_of(
        c.map(ast.Neg),
        st.builds(ast.Arith, st.sampled_from(["+", "-", "*", "/"]), c, c),
        c.map(lambda x: ast.Call("abs", (x,))),
        st.builds(lambda f, a, b: ast.Call(f, (a, b)), st.sampled_from(["min", "max"]), c, c),
    ),
    max_leaves=6,
)
str_test = st.one_of(
    st.builds(ast.StrTest, st.sampled_from(["device", "zone"]),
              st.sampled_from(["==", "!=", "matches"]),
              st.sampled_from(PATTERNS).map(lambda p: (p,))),
    st.builds(ast.StrTest, st.sampled_from(["device", "zone"]), st.just("in"),
              st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3).map(tuple)),
)  # fmt: skip
CMP_OPS = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
# leaf-against-small-constant comparisons are listed twice: they are the ones most likely to
# decide a rule on random readings, so they give the equivalence test its power
simple_compare = st.builds(
    ast.Compare, CMP_OPS, num_leaf, st.integers(-1, 61).map(float).map(ast.Num)
)
bool_leaf = st.one_of(
    st.booleans().map(ast.Const),
    simple_compare,
    simple_compare,
    st.builds(ast.Compare, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), num_expr, num_expr),
    st.sampled_from(FIELDS).map(ast.Has),
    str_test,
)
bool_expr = st.recursive(
    bool_leaf,
    lambda c: st.one_of(c.map(ast.Not), st.builds(ast.And, c, c), st.builds(ast.Or, c, c)),
    max_leaves=5,
)


@st.composite
def rules(draw: st.DrawFn, name: str) -> ast.Rule:
    actions: list[ast.Action] = ["allow", "deny", "flag", "transform"]
    action = draw(st.sampled_from(actions))
    assigns: tuple[tuple[str, ast.NumExpr], ...] = ()
    if action == "transform":
        targets = draw(
            st.lists(st.sampled_from([*FIELDS, "new"]), min_size=1, max_size=3, unique=True)
        )
        assigns = tuple((t, draw(num_expr)) for t in targets)
    reason = draw(st.text(max_size=12))
    return ast.Rule(name, draw(bool_expr), action, reason, assigns)


@st.composite
def policies(draw: st.DrawFn) -> ast.Policy:
    count = draw(st.integers(1, 5))
    return ast.Policy(
        draw(st.text(max_size=10)),
        draw(st.integers(0, 1000)),
        draw(st.sampled_from(["allow", "deny"])),
        draw(st.text(max_size=10)),
        tuple(draw(rules(f"r{i}")) for i in range(count)),
    )


field_values = st.one_of(
    st.floats(),
    st.integers(-(2**70), 2**70),
    st.integers(-5, 30),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
    st.just(10**400),
)
timestamps = st.one_of(
    st.integers(1_600_000_000_000, 1_900_000_000_000),
    st.integers(-(2**65), 2**65),
    st.integers(-100_000, 100_000),
)
readings = st.builds(
    Reading,
    device=st.sampled_from(DEVICES),
    boot=st.just("b"),
    seq=st.integers(0, 10),
    ts_ms=timestamps,
    values=st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=4),
    received_ms=timestamps,
)


def same_number(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return (
        bool(x == y)
        and type(x) is type(y)
        and (not isinstance(x, float) or math.copysign(1, x) == math.copysign(1, y))
    )


def same_decision(x: Decision, y: Decision) -> bool:
    if (x.action, x.rule_id, x.rule, x.reason) != (y.action, y.rule_id, y.rule, y.reason):
        return False
    if x.values is None or y.values is None:
        return x.values is y.values
    return x.values.keys() == y.values.keys() and all(
        same_number(x.values[k], y.values[k]) for k in x.values
    )
