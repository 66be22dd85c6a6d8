"""Reduction: rewrite a query into a simpler one that means exactly the same.

Faithful to goldrush's ``glc_lib:reduce`` (repeat until nothing changes): flatten nested
``all``/``any``, drop duplicates, factor conditions that every branch of an ``any`` requires
(``any(a∧b, a∧c)`` → ``a ∧ any(b, c)``) and fold constants. goldrush's ``common`` step for
``all`` is left out on purpose: it turns ``all(any(a, b), any(a, c))`` into ``a ∧ b ∧ c``,
which is not equivalent. Past goldrush, all sound:

- absorption: ``a and any(a, b)`` → ``a``; ``a or all(a, b)`` → ``a``;
- one field, several tests: with ``x == 5`` every other test on ``x`` is decided (kept out or
  the whole ``all`` is false); ``x > 5 ∧ x > 9`` → ``x > 9``; ``x > 9 ∧ x < 3`` → false;
  ``exists(x)`` is implied by any other test on ``x``; ``missing(x)`` with one is false;
- ``in [v]`` → ``== v``, ``not in [v]`` → ``!= v``, ``in []`` → false, ``not in []`` → exists;
- ``not not a`` → ``a``, ``not exists`` ↔ ``missing``, ``not true`` → ``false``.

Conjuncts come out ordered cheapest-first (equality, presence, thresholds, ... regex, nested
``any``) so compiled code short-circuits early; the index relies on equalities being first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import msgspec

from amcp.goldrush import semantics as sem
from amcp.goldrush.interpret import matches
from amcp.goldrush.query import (
    All,
    Any,
    Cond,
    Contains,
    Eq,
    Exists,
    FieldCmp,
    Gt,
    Gte,
    In,
    Lt,
    Lte,
    Missing,
    Neq,
    Not,
    NotIn,
    Null,
    Prefix,
    Query,
    Regex,
    Scalar,
    With,
)

_TRUE = Null(value=True)
_FALSE = Null(value=False)
_RANK: dict[type, int] = {
    Eq: 0,
    In: 1,
    Missing: 2,
    Exists: 3,
    Neq: 4,
    Gt: 5,
    Gte: 5,
    Lt: 5,
    Lte: 5,
    NotIn: 6,
    Prefix: 7,
    Contains: 8,
    FieldCmp: 9,
    Regex: 10,
    Not: 11,
    Any: 12,
    All: 13,
    Null: 14,
}
_SINGLE_PATH = (Eq, Neq, Gt, Gte, Lt, Lte, Exists, In, NotIn, Contains, Prefix, Regex)
_encoder = msgspec.msgpack.Encoder()


def key(node: Cond) -> bytes:
    """Exact identity of a node (msgpack keeps ``true``, ``1`` and ``1.0`` apart, and NaN)."""
    return _encoder.encode(node)


def _order(node: Cond) -> int:
    """Cheapest first; ``sorted`` is stable, so the author's order holds within a rank."""
    return _RANK[type(node)]


def reduce(query: Query) -> Query:
    """The simplest equivalent query; a ``With`` keeps its actions."""
    if isinstance(query, With):
        return With(reduce_cond(query.cond), query.actions)
    return reduce_cond(query)


def reduce_cond(cond: Cond) -> Cond:
    current = cond
    for _ in range(64):  # each pass only shrinks the tree; the bound is a safety net
        nxt = _pass(current)
        if key(nxt) == key(current):
            return nxt
        current = nxt
    return current


def _pass(node: Cond) -> Cond:  # noqa: PLR0911
    match node:
        case All(conds=conds):
            return _all([_pass(c) for c in conds])
        case Any(conds=conds):
            return _any([_pass(c) for c in conds])
        case Not(cond=inner):
            return _not(_pass(inner))
        case In(path=path, values=values):
            values = _unique_values(values)
            if not values:
                return _FALSE
            return Eq(path, values[0]) if len(values) == 1 else In(path, values)
        case NotIn(path=path, values=values):
            values = _unique_values(values)
            if not values:
                return Exists(path)
            return Neq(path, values[0]) if len(values) == 1 else NotIn(path, values)
    return node


def _unique_values(values: tuple[Scalar, ...]) -> tuple[Scalar, ...]:
    seen: dict[bytes, Scalar] = {}
    for v in values:
        seen.setdefault(_encoder.encode(v), v)
    return tuple(seen[k] for k in sorted(seen))


def _not(inner: Cond) -> Cond:
    match inner:
        case Not(cond=c):
            return c
        case Null(value=v):
            return Null(not v)
        case Exists(path=p):
            return Missing(p)
        case Missing(path=p):
            return Exists(p)
    return Not(inner)


def _flat(conds: list[Cond], kind: type[All | Any]) -> list[Cond]:
    out: dict[bytes, Cond] = {}
    for c in conds:
        for member in c.conds if isinstance(c, kind) else (c,):
            out.setdefault(key(member), member)
    return sorted(out.values(), key=_order)


def _all(conds: list[Cond]) -> Cond:
    flat = _flat(conds, All)
    if any(isinstance(c, Null) and not c.value for c in flat):
        return _FALSE
    flat = [c for c in flat if not isinstance(c, Null)]
    keys = {key(c) for c in flat}
    # absorption: an `any` that has one of our conjuncts as a branch always holds
    flat = [c for c in flat if not (isinstance(c, Any) and any(key(b) in keys for b in c.conds))]
    folded = _same_field(flat)
    if folded is None:
        return _FALSE
    if not folded:
        return _TRUE
    return folded[0] if len(folded) == 1 else All(tuple(folded))


def _conjuncts(node: Cond) -> list[Cond]:
    return list(node.conds) if isinstance(node, All) else [node]


def _any(conds: list[Cond]) -> Cond:
    flat = _flat(conds, Any)
    if any(isinstance(c, Null) and c.value for c in flat):
        return _TRUE
    flat = [c for c in flat if not isinstance(c, Null)]
    if not flat:
        return _FALSE
    if len(flat) == 1:
        return flat[0]
    keys = {key(c) for c in flat}
    # absorption: an `all` that contains another branch is implied by that branch
    flat = [c for c in flat if not (isinstance(c, All) and any(key(m) in keys for m in c.conds))]
    if len(flat) == 1:
        return flat[0]
    # goldrush `required`: conditions every branch needs are tested once, before the `any`
    member_keys = [{key(m) for m in _conjuncts(c)} for c in flat]
    common = set.intersection(*member_keys)
    if common:
        shared = [m for m in _conjuncts(flat[0]) if key(m) in common]
        rest = [_all([m for m in _conjuncts(c) if key(m) not in common]) for c in flat]
        return _all([*shared, _any(rest)])
    return Any(tuple(flat))


def _number(value: object) -> bool:
    return sem.is_number(value) and not (isinstance(value, float) and math.isnan(value))


def _same_field(conds: list[Cond]) -> list[Cond] | None:
    """Decide or merge tests on the same field inside one ``all``; None means false."""
    by_path: dict[tuple[str, ...], list[Cond]] = {}
    for c in conds:
        if isinstance(c, (*_SINGLE_PATH, Missing)):
            by_path.setdefault(c.path, []).append(c)
    drop: set[bytes] = set()
    extra: list[Cond] = []
    for path, tests in by_path.items():
        if len(tests) < 2:
            continue
        result = _decide(path, tests, drop, extra)
        if result is False:
            return None
    out = [c for c in conds if key(c) not in drop]
    return sorted(out + extra, key=_order) if extra else out


def _decide(path: tuple[str, ...], tests: list[Cond], drop: set[bytes], extra: list[Cond]) -> bool:
    """Fold the tests on one path; False means the ``all`` can never hold."""
    if any(isinstance(t, Missing) for t in tests):
        return False  # every other test needs the field, and `missing` was deduplicated
    eq = next((t for t in tests if isinstance(t, Eq) and _decidable(t.value)), None)
    if eq is not None:
        for t in tests:
            if t is eq:
                continue
            if not matches(t, _nest(path, eq.value)):
                return False
            drop.add(key(t))
        return True
    if any(not isinstance(t, Exists) for t in tests):
        drop.update(key(t) for t in tests if isinstance(t, Exists))
    lower = [t for t in tests if isinstance(t, Gt | Gte) and _number(t.value)]
    upper = [t for t in tests if isinstance(t, Lt | Lte) and _number(t.value)]
    best_low = _strongest(lower, max, Gt)
    best_up = _strongest(upper, min, Lt)
    for group, best in ((lower, best_low), (upper, best_up)):
        if best is not None and len(group) > 1:
            drop.update(key(t) for t in group)
            extra.append(best)
    if best_low is not None and best_up is not None:
        lo, hi = best_low.value, best_up.value
        assert isinstance(lo, int | float)
        assert isinstance(hi, int | float)
        strict = isinstance(best_low, Gt) or isinstance(best_up, Lt)
        if lo > hi or (lo == hi and strict):
            return False
    return True


def _strongest(
    tests: Sequence[Gt | Gte | Lt | Lte],
    pick: Callable[[list[float]], float],
    strict: type[Gt | Lt],
) -> Gt | Gte | Lt | Lte | None:
    if not tests:
        return None
    values = [float(t.value) for t in tests]  # type: ignore[arg-type]  # numbers, checked
    bound = pick(values)
    at_bound = [t for t, v in zip(tests, values, strict=True) if v == bound]
    return next((t for t in at_bound if isinstance(t, strict)), at_bound[0])


def _decidable(value: object) -> bool:
    return not (isinstance(value, float) and math.isnan(value))


def _nest(path: tuple[str, ...], value: object) -> dict[str, object]:
    event: dict[str, object] = {path[-1]: value}
    for k in reversed(path[:-1]):
        event = {k: event}
    return event
