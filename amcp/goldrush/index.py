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
from amcp.goldrush.query import All, Cond, Eq, Gt, Gte, In, Lt, Lte, Null, Path, Scalar

NodeFn = Callable[[Mapping[str, Any], list[str]], None]
Item = tuple[str, list[Cond]]

LEAF_SIZE: Final = 8
"""Groups at most this big are compiled as one function instead of being split further."""
MAX_DEPTH: Final = 8


class _BoolKey:
    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<{self.value}>"


TRUE_KEY: Final = _BoolKey(value=True)
FALSE_KEY: Final = _BoolKey(value=False)


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
    members: list[tuple[str, Cond]]


@dataclass
class _EqPlan:
    path: Path
    table: dict[object, _Plan]
    rest: _Plan | None


@dataclass
class _ThresholdPlan:
    path: Path
    # op -> [(constant, pattern id, what is left to test or None)], sorted by constant
    lists: dict[str, list[tuple[float, str, Cond | None]]] = field(default_factory=dict)
    rest: _Plan | None = None


_Plan = _GroupPlan | _EqPlan | _ThresholdPlan


class Planner:
    """Decides how to split (pattern id, conjuncts) items: equality, thresholds, groups."""

    def __init__(self, leaf_size: int = LEAF_SIZE) -> None:
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
        return _GroupPlan([(pid, _and(conds)) for pid, conds in items])

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
        return _EqPlan(
            path, {k: v for k, v in table.items() if v is not None}, self.plan(rest, depth + 1)
        )

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
        plan = _ThresholdPlan(path)
        rest: list[Item] = []
        for pid, conds in items:
            for i, c in enumerate(conds):
                t = _threshold(c)
                if t is not None and t[1] == path:
                    residual = conds[:i] + conds[i + 1 :]
                    plan.lists.setdefault(t[0], []).append(
                        (t[2], pid, _and(residual) if residual else None)
                    )
                    break
            else:
                rest.append((pid, conds))
        for rows in plan.lists.values():
            rows.sort(key=lambda r: r[0])
        plan.rest = self.plan(rest, depth + 1)
        return plan


def _and(conds: list[Cond]) -> Cond:
    if not conds:
        return Null(value=True)
    return conds[0] if len(conds) == 1 else All(tuple(conds))


# ---- code for a plan ----------------------------------------------------------------------
# The whole plan becomes generated code too: a split is a few inline statements, the
# patterns left at a leaf are inlined as a group, and only the sub-plans behind an equality
# table are separate functions (one per constant). No closures, no per-node calls.

_CUTS = {"gt": ("BL", False), "gte": ("BR", False), "lt": ("BR", True), "lte": ("BL", True)}


class Emitter:
    """Writes a plan into a :class:`codegen.Program`."""

    def __init__(self, program: codegen.Program) -> None:
        self.program = program
        self.fixups: list[dict[object, object] | list[Any]] = []
        program.bind("BL", bisect_left)
        program.bind("BR", bisect_right)
        program.bind("TRUE_KEY", TRUE_KEY)
        program.bind("FALSE_KEY", FALSE_KEY)
        program.bind("LOOKUP", sem.lookup)

    def function(self, plan: _Plan | None) -> str:
        """Add ``def name(e, out)`` for ``plan``; returns the name."""
        name = self.program.new_name("node")
        body = self.lines(plan, "    ") if plan is not None else []
        self.program.add("\n".join([f"def {name}(e, out):", *body, "    pass"]) + "\n")
        return name

    def lines(self, plan: _Plan, pad: str) -> list[str]:
        if isinstance(plan, _GroupPlan):
            return codegen.group_lines(self.program, plan.members, pad)
        if isinstance(plan, _EqPlan):
            return self._eq(plan, pad)
        return self._threshold(plan, pad)

    def _read(self, path: Path, pad: str) -> tuple[str, list[str]]:
        var = self.program.new_name("k")
        if len(path) == 1:
            return var, [f"{pad}{var} = e.get({path[0]!r}, M)"]
        return var, [f"{pad}{var} = LOOKUP(e, {self.program.const(path)})"]

    def _eq(self, plan: _EqPlan, pad: str) -> list[str]:
        table: dict[object, object] = {k: self.function(sub) for k, sub in plan.table.items()}
        self.fixups.append(table)
        t = self.program.const(table)
        v, lines = self._read(plan.path, pad)
        c = self.program.new_name("c")
        lines += [
            f"{pad}if {v}.__class__ is bool:",
            f"{pad}    {v} = TRUE_KEY if {v} else FALSE_KEY",
            f"{pad}try:",
            f"{pad}    {c} = {t}.get({v})",
            f"{pad}except TypeError:",  # unhashable (list, mapping): equals no constant
            f"{pad}    {c} = None",
            f"{pad}if {c} is not None:",
            f"{pad}    {c}(e, out)",
        ]
        if plan.rest is not None:
            lines += self.lines(plan.rest, pad)
        return lines

    def _threshold(self, plan: _ThresholdPlan, pad: str) -> list[str]:
        v, lines = self._read(plan.path, pad)
        # numbers only: not bool, not NaN (NaN passes no threshold)
        lines.append(f"{pad}if ({v}.__class__ is int or {v}.__class__ is float) and {v} == {v}:")
        inner = pad + "    "
        for op, rows in plan.lists.items():
            cut, tail = _CUTS[op]
            bare = [(c, pid) for c, pid, rest in rows if rest is None]
            tested = [(c, pid, rest) for c, pid, rest in rows if rest is not None]
            if bare:
                consts = self.program.const([c for c, _ in bare])
                ids = self.program.const([pid for _, pid in bare])
                sl = f"{cut}({consts}, {v}):" if tail else f":{cut}({consts}, {v})"
                lines.append(f"{inner}out.extend({ids}[{sl}])")
            if tested:
                consts = self.program.const([c for c, _, _ in tested])
                names = [(pid, codegen.compile_matcher(self.program, r)) for _, pid, r in tested]
                fns: list[object] = list(names)
                self.fixups.append(fns)
                rows_name = self.program.const(fns)
                sl = f"{cut}({consts}, {v}):" if tail else f":{cut}({consts}, {v})"
                lines += [
                    f"{inner}for pid, fn in {rows_name}[{sl}]:",
                    f"{inner}    if fn(e):",
                    f"{inner}        out.append(pid)",
                ]
        lines.append(f"{inner}pass")
        if plan.rest is not None:
            lines += self.lines(plan.rest, pad)
        return lines

    def finish(self, root: str) -> NodeFn:
        """Compile, then swap function names in the tables for the functions themselves."""
        ns = codegen.finish(self.program)
        for fixup in self.fixups:
            if isinstance(fixup, dict):
                for k, name in fixup.items():
                    fixup[k] = ns[str(name)]
            else:
                fixup[:] = [(pid, ns[name]) for pid, name in fixup]
        fn: NodeFn = ns[root]  # type: ignore[assignment]
        return fn


def build(items: list[Item], leaf_size: int = LEAF_SIZE) -> NodeFn:
    """The matcher ``fn(event, out)`` for (pattern id, conjuncts) items."""
    emitter = Emitter(codegen.Program())
    root = emitter.function(Planner(leaf_size).plan(items))
    return emitter.finish(root)
