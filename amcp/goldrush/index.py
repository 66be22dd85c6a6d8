"""Many patterns, one pass: a decision index over compiled pattern groups.

goldrush's ``union`` compiles several queries into one module so shared conditions are
tested once. With a thousand per-device patterns that is not enough: each event would still
walk all of them. The index splits the patterns on what they require:

- **equality** on a field (``device == "d-17"``, ``status in ["a", "b"]``): a dict from the
  constant to the sub-index of the patterns that need it, so an event reaches only the
  patterns of its own device;
- **thresholds** on a field (``temp > 90``): per operator a sorted list of constants; one
  ``bisect`` finds every pattern whose threshold the event passes, and only those run;
- what is left (a handful of patterns) is one compiled group function.

Cost per event therefore grows with the patterns that can match, not with all patterns.
Each split removes the condition it used, so the code below a split tests only the rest.
Numbers share dict slots across int and float (``hash(1) == hash(1.0)``); ``True`` and
``False`` get their own keys because Python would otherwise file them under 1 and 0.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from amcp.goldrush import codegen
from amcp.goldrush import semantics as sem
from amcp.goldrush.query import Cond, Eq, Gt, Gte, In, Lt, Lte, Path, Scalar

NodeFn = Callable[[Mapping[str, Any], list[str]], None]
Item = tuple[str, list[Cond]]

LEAF_SIZE: Final = 6
"""Groups at most this big are compiled as one function instead of being split further."""
MAX_DEPTH: Final = 8


class _BoolKey:
    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<{self.value}>"


TRUE_KEY: Final = _BoolKey(True)
FALSE_KEY: Final = _BoolKey(False)


def _index_key(value: Scalar) -> object | None:
    """The dict key for a constant, or None when equality cannot be hashed (NaN)."""
    if value is True:
        return TRUE_KEY
    if value is False:
        return FALSE_KEY
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _eq_keys(cond: Cond, path: Path) -> list[object] | None:
    if isinstance(cond, Eq) and cond.path == path:
        k = _index_key(cond.value)
        return None if k is None else [k]
    if isinstance(cond, In) and cond.path == path:
        keys = [_index_key(v) for v in cond.values]
        if any(k is None for k in keys):
            return None
        return list(dict.fromkeys(keys))  # 1 and 1.0 are one key
    return None


def _threshold(cond: Cond) -> tuple[str, Path, float] | None:
    if isinstance(cond, Gt | Gte | Lt | Lte) and sem.is_number(cond.value):
        value = cond.value
        assert isinstance(value, int | float)
        if not (isinstance(value, float) and math.isnan(value)):
            return type(cond).__name__.lower(), cond.path, value
    return None


@dataclass
class _GroupPlan:
    name: str


@dataclass
class _EqPlan:
    path: Path
    table: dict[object, _Plan]
    rest: _Plan | None


@dataclass
class _ThresholdPlan:
    path: Path
    # op -> (sorted constants, [(pattern id, residual matcher name or None)])
    lists: dict[str, tuple[list[float], list[tuple[str, str | None]]]] = field(default_factory=dict)
    rest: _Plan | None = None


_Plan = _GroupPlan | _EqPlan | _ThresholdPlan


class Planner:
    """Turns (pattern id, conjuncts) items into a plan, adding code to one program."""

    def __init__(self, program: codegen.Program, leaf_size: int = LEAF_SIZE) -> None:
        self.program = program
        self.leaf_size = leaf_size

    def plan(self, items: list[Item], depth: int = 0) -> _Plan | None:
        if not items:
            return None
        if len(items) <= self.leaf_size or depth >= MAX_DEPTH:
            return self._group(items)
        eq_plan = self._split_eq(items, depth)
        if eq_plan is not None:
            return eq_plan
        threshold_plan = self._split_threshold(items, depth)
        if threshold_plan is not None:
            return threshold_plan
        return self._group(items)

    def _group(self, items: list[Item]) -> _GroupPlan:
        members = [(pid, _and(conds)) for pid, conds in items]
        return _GroupPlan(codegen.compile_group(self.program, members))

    def _split_eq(self, items: list[Item], depth: int) -> _EqPlan | None:
        counts: dict[Path, int] = {}
        for _, conds in items:
            for p in {c.path for c in conds if isinstance(c, Eq | In)}:
                counts[p] = counts.get(p, 0) + 1
        if not counts:
            return None
        path = max(counts, key=lambda p: counts[p])
        if counts[path] < 2:
            return None
        buckets: dict[object, list[Item]] = {}
        rest: list[Item] = []
        for pid, conds in items:
            for i, c in enumerate(conds):
                keys = _eq_keys(c, path)
                if keys is not None:
                    residual = conds[:i] + conds[i + 1 :]
                    for k in keys:
                        buckets.setdefault(k, []).append((pid, residual))
                    break
            else:
                rest.append((pid, conds))
        if not buckets:
            return None
        table = {k: self.plan(b, depth + 1) for k, b in buckets.items()}
        return _EqPlan(path, {k: v for k, v in table.items() if v is not None}, self.plan(rest))

    def _split_threshold(self, items: list[Item], depth: int) -> _ThresholdPlan | None:
        counts: dict[Path, int] = {}
        for _, conds in items:
            for p in {t[1] for t in map(_threshold, conds) if t is not None}:
                counts[p] = counts.get(p, 0) + 1
        if not counts:
            return None
        path = max(counts, key=lambda p: counts[p])
        if counts[path] <= self.leaf_size:
            return None
        entries: dict[str, list[tuple[float, str, str | None]]] = {}
        rest: list[Item] = []
        for pid, conds in items:
            for i, c in enumerate(conds):
                t = _threshold(c)
                if t is not None and t[1] == path:
                    residual = conds[:i] + conds[i + 1 :]
                    name = codegen.compile_matcher(self.program, _and(residual)) if residual else None
                    entries.setdefault(t[0], []).append((t[2], pid, name))
                    break
            else:
                rest.append((pid, conds))
        plan = _ThresholdPlan(path, rest=self.plan(rest, depth + 1))
        for op, rows in entries.items():
            rows.sort(key=lambda r: r[0])
            plan.lists[op] = ([r[0] for r in rows], [(r[1], r[2]) for r in rows])
        return plan


def _and(conds: list[Cond]) -> Cond:
    from amcp.goldrush.query import All, Null  # noqa: PLC0415 - tiny helper, avoids clutter

    if not conds:
        return Null(value=True)
    return conds[0] if len(conds) == 1 else All(tuple(conds))


def _reader(path: Path) -> Callable[[Mapping[str, Any]], Any]:
    if len(path) == 1:
        key = path[0]
        missing = sem.MISSING
        return lambda e: e.get(key, missing)
    return lambda e: sem.lookup(e, path)


def instantiate(plan: _Plan | None, ns: Mapping[str, object]) -> NodeFn | None:
    """Turn a plan into closures over the compiled functions in ``ns``."""
    if plan is None:
        return None
    if isinstance(plan, _GroupPlan):
        fn: NodeFn = ns[plan.name]  # type: ignore[assignment]
        return fn
    if isinstance(plan, _EqPlan):
        return _eq_node(plan, ns)
    return _threshold_node(plan, ns)


def _eq_node(plan: _EqPlan, ns: Mapping[str, object]) -> NodeFn:
    read = _reader(plan.path)
    table: dict[object, NodeFn] = {}
    for k, sub in plan.table.items():
        fn = instantiate(sub, ns)
        if fn is not None:
            table[k] = fn
    rest = instantiate(plan.rest, ns)
    get = table.get

    def eq_node(e: Mapping[str, Any], out: list[str]) -> None:
        v = read(e)
        if v.__class__ is bool:
            v = TRUE_KEY if v else FALSE_KEY
        try:
            child = get(v)
        except TypeError:  # unhashable value (list, mapping): equals no constant
            child = None
        if child is not None:
            child(e, out)
        if rest is not None:
            rest(e, out)

    return eq_node


def _threshold_node(plan: _ThresholdPlan, ns: Mapping[str, object]) -> NodeFn:
    read = _reader(plan.path)
    rest = instantiate(plan.rest, ns)
    resolved: dict[str, tuple[list[float], list[tuple[str, codegen.Matcher | None]]]] = {}
    for op, (consts, rows) in plan.lists.items():
        fns = [(pid, None if name is None else ns[name]) for pid, name in rows]
        resolved[op] = (consts, fns)  # type: ignore[assignment]
    empty: tuple[list[float], list[tuple[str, codegen.Matcher | None]]] = ([], [])
    gt, gte, lt, lte = (resolved.get(op, empty) for op in ("gt", "gte", "lt", "lte"))

    def run(e: Mapping[str, Any], out: list[str], rows: list[Any]) -> None:
        for pid, fn in rows:
            if fn is None or fn(e):
                out.append(pid)

    def threshold_node(e: Mapping[str, Any], out: list[str]) -> None:
        v = read(e)
        cls = v.__class__
        if (cls is int or cls is float) and v == v:  # numbers, not bool, not NaN
            if gt[0]:
                run(e, out, gt[1][: bisect_left(gt[0], v)])
            if gte[0]:
                run(e, out, gte[1][: bisect_right(gte[0], v)])
            if lt[0]:
                run(e, out, lt[1][bisect_right(lt[0], v) :])
            if lte[0]:
                run(e, out, lte[1][bisect_left(lte[0], v) :])
        if rest is not None:
            rest(e, out)

    return threshold_node
