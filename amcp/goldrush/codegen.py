"""Compilation of reduced queries to Python functions (goldrush's ``glc_code``, in Python).

A pattern becomes one ``if`` over an ``and`` chain of its conjuncts, inside ``try``:

    def p0(e, M=M, ...):
        try:
            if (v0 := e.get('device', M)) == 'd-17' and (v1 := e.get('temp', M)) > 90:
                return True
        except TypeError:
            pass
        return False

- Each field is read once, at its first use, through an assignment expression; later
  conjuncts reuse the variable, and a conjunct that fails stops the reading (short-circuit).
  Fields shared by several patterns of a group (:func:`compile_group`) are read once for all.
- A conjunct of the top-level chain may compare raw: ``"a" > 90`` raises ``TypeError``,
  which means "no match" for the whole pattern, exactly as the semantics say. Inside ``any``
  or ``not`` a test must not raise, so it is emitted in a guarded form instead.
- Constants are specialised at compile time: ``x > 90`` needs no bool guard (neither
  ``True`` nor ``False`` exceeds 90), ``x > 0`` does; ``x == 'a'`` needs no type check.
- Names the code needs (sentinels, regexes, helpers) are module globals of the generated
  code; CPython 3.11 specialises those loads, so they cost about what a local does.

All functions of one build are emitted into one source text and compiled with a single
``compile()`` call, which keeps rebuilding 1000 patterns cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from amcp.goldrush import semantics as sem
from amcp.goldrush.interpret import compile_regex
from amcp.goldrush.query import (
    All,
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
    Path,
    Prefix,
    Regex,
    Scalar,
)
from amcp.goldrush.query import Any as AnyOf

Matcher = Callable[[Mapping[str, Any]], bool]
GroupFn = Callable[[Mapping[str, Any], list[str]], None]

_T = Null(value=True)
_F = Null(value=False)
_ORD_OPS = {Gt: ">", Gte: ">=", Lt: "<", Lte: "<="}
_NUM = frozenset({int, float})


def _eq_in(v: object, values: tuple[Scalar, ...]) -> bool:
    return any(sem.equal(v, x) for x in values)


_NEVER = object()
_BASE_NS: dict[str, object] = {
    "NEVER": _NEVER,
    "M": sem.MISSING,
    "G": sem.get_key,
    "NUM": _NUM,
    "EQ": sem.equal,
    "CMP": sem.compare,
    "IN": _eq_in,
    "CONTAINS": sem.contains,
}


class Program:
    """Accumulates generated functions and the constants they need, then compiles them."""

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self._ns: dict[str, object] = dict(_BASE_NS)
        self._const_ids: dict[int, str] = {}
        self._count = 0

    def const(self, value: object) -> str:
        """A name bound to ``value`` in the generated code's namespace."""
        name = self._const_ids.get(id(value))
        if name is None:
            name = f"K{len(self._ns)}"
            self._ns[name] = value
            self._const_ids[id(value)] = name
        return name

    def bind(self, name: str, value: object) -> None:
        """Make ``name`` mean ``value`` in the generated code."""
        self._ns[name] = value

    def new_name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def add(self, source: str) -> None:
        self._chunks.append(source)

    def build(self) -> dict[str, object]:
        """Compile everything added so far; returns the namespace holding the functions."""
        code = compile("\n".join(self._chunks), "<goldrush>", "exec")
        exec(code, self._ns)  # noqa: S102 - source generated here from a validated AST
        return self._ns


def _lit(program: Program, value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return program.const(value)
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    return program.const(value)


class _Scope:
    """Field variables already bound at the current point of the generated code."""

    def __init__(self, program: Program, bound: dict[Path, str] | None = None) -> None:
        self.program = program
        self.bound: dict[Path, str] = dict(bound or {})

    def read(self, path: Path) -> str:
        """An expression giving the field's value, binding it at first use."""
        var = self.bound.get(path)
        if var is not None:
            return var
        if len(path) == 1:
            source = f"e.get({path[0]!r}, M)"
        else:
            first = self.read(path[:-1])  # binds the parent in the condition, evaluated first
            parent = self.bound[path[:-1]]
            k = repr(path[-1])
            source = f"({parent}.get({k}, M) if {first}.__class__ is dict else G({parent}, {k}))"
        var = self.program.new_name("v")
        self.bound[path] = var
        return f"({var} := {source})"

    def var(self, path: Path) -> str:
        return self.bound[path]


def _paths(node: Cond) -> list[Path]:
    """Every field a node reads, parents before children."""
    match node:
        case All(conds=conds) | AnyOf(conds=conds):
            return [p for c in conds for p in _paths(c)]
        case Not(cond=c):
            return _paths(c)
        case Null():
            return []
        case FieldCmp(left=left, right=right):
            return [left, right]
    return [node.path]


def _bool_can_pass(op: str, value: Scalar) -> bool:
    """Whether True or False would satisfy ``x op value`` under Python's raw comparison."""
    if not sem.is_number(value):
        return False
    checks = {">": lambda b: b > value, ">=": lambda b: b >= value}
    checks |= {"<": lambda b: b < value, "<=": lambda b: b <= value, "==": lambda b: b == value}
    return bool(checks[op](True) or checks[op](False))  # noqa: FBT003


def _eq_expr(x: str, v: str, value: Scalar, program: Program) -> str:
    """``x`` is the first mention (may bind), ``v`` the variable afterwards."""
    if value is None or isinstance(value, bool):
        return f"{x} is {value!r}"
    if isinstance(value, float) and math.isnan(value):
        return f"({x} is M and False)"
    if isinstance(value, str):
        return f"{x} == {value!r}"
    guard = f" and {v}.__class__ is not bool" if _bool_can_pass("==", value) else ""
    return f"({x} == {_lit(program, value)}{guard})"


def _in_expr(x: str, v: str, values: tuple[Scalar, ...], program: Program) -> str:
    """Membership by kind: a str set, a number set, then bool/None identities."""
    strs = frozenset(c for c in values if isinstance(c, str))
    nums = frozenset(
        c for c in values if sem.is_number(c) and not (isinstance(c, float) and math.isnan(c))
    )
    idents = [repr(c) for c in dict.fromkeys(c for c in values if c is None or isinstance(c, bool))]
    parts: list[str] = []
    first = x
    if strs:
        parts.append(f"({first}.__class__ is str and {v} in {program.const(strs)})")
        first = v
    if nums:
        parts.append(f"({first}.__class__ in NUM and {v} in {program.const(nums)})")
        first = v
    for ident in idents:
        parts.append(f"{first} is {ident}")
        first = v
    if not parts:
        return f"({x} is M and False)"
    return "(" + " or ".join(parts) + ")"


def _ord_expr(  # noqa: PLR0917 - one call site, positional reads best there
    op: str, x: str, v: str, value: Scalar, program: Program, raw: bool
) -> str:
    if value is None or isinstance(value, bool):
        return f"({x} is M and False)"
    if isinstance(value, float) and math.isnan(value):
        return f"({x} is M and False)"
    lit = _lit(program, value)
    if isinstance(value, str):
        if raw:
            return f"{x} {op} {lit}"
        return f"({x}.__class__ is str and {v} {op} {lit})"
    guard = f" and {v}.__class__ is not bool" if _bool_can_pass(op, value) else ""
    if raw:
        return f"({x} {op} {lit}{guard})"
    return f"({x}.__class__ in NUM and {v} {op} {lit}{guard})"


def _leaf(node: Cond, scope: _Scope, raw: bool) -> str:  # noqa: C901, PLR0911, PLR0912
    program = scope.program
    match node:
        case Null(value=value):
            return repr(value)
        case FieldCmp(cmp=op, left=left, right=right):
            a, b = scope.read(left), scope.read(right)
            return f"CMP({op!r}, {a}, {b})"
        case Not(cond=c):
            return f"not {_expr(c, scope, raw=False)}"
        case All(conds=conds):
            return "(" + " and ".join(_expr(c, scope, raw=False) for c in conds or [_T]) + ")"
        case AnyOf(conds=conds):
            return "(" + " or ".join(_expr(c, scope, raw=False) for c in conds or [_F]) + ")"
    path: Path = node.path
    x = scope.read(path)
    v = scope.var(path)
    match node:
        case Eq():
            return _eq_expr(x, v, node.value, program)
        case Neq():
            return f"({x} is not M and not {_eq_expr(v, v, node.value, program)})"
        case Gt() | Gte() | Lt() | Lte():
            return _ord_expr(_ORD_OPS[type(node)], x, v, node.value, program, raw)
        case Exists():
            return f"{x} is not M"
        case Missing():
            return f"{x} is M"
        case In(values=values):
            return _in_expr(x, v, values, program)
        case NotIn(values=values):
            return f"({x} is not M and not {_in_expr(v, v, values, program)})"
        case Contains():
            return f"CONTAINS({x}, {_lit(program, node.value)})"
        case Prefix():
            return f"({x}.__class__ is str and {v}.startswith({node.value!r}))"
        case Regex(pattern=pattern):
            rx = program.const(compile_regex(pattern))
            return f"({x}.__class__ is str and {rx}.search({v}) is not None)"
    raise AssertionError(node)


def _expr(node: Cond, scope: _Scope, raw: bool) -> str:
    """A guarded expression; compound nodes pre-bind their fields so `or` never skips one."""
    if isinstance(node, All | AnyOf | Not):
        pre = [scope.read(p) for p in _paths(node) if p not in scope.bound]
        body = _leaf(node, scope, raw)
        if pre:
            binds = " and ".join(f"{b} is not NEVER" for b in pre)
            return f"({binds} and {body})"
        return body
    return _leaf(node, scope, raw)


def chain(conds: Sequence[Cond], scope: _Scope) -> str:
    """The ``and`` chain of a pattern's conjuncts; raw comparisons allowed at this level."""
    if not conds:
        return "True"
    return " and ".join(_expr(c, scope, raw=True) for c in conds)


def conjuncts(cond: Cond) -> list[Cond]:
    if isinstance(cond, All):
        return list(cond.conds)
    if isinstance(cond, Null) and cond.value:
        return []
    return [cond]


def compile_matcher(program: Program, cond: Cond) -> str:
    """Add a ``f(event) -> bool`` for ``cond``; returns its name in the built namespace."""
    name = program.new_name("match")
    scope = _Scope(program)
    test = chain(conjuncts(cond), scope)
    program.add(
        f"def {name}(e):\n"
        f"    try:\n"
        f"        if {test}:\n"
        f"            return True\n"
        f"    except TypeError:\n"
        f"        pass\n"
        f"    return False\n"
    )
    return name


def group_lines(program: Program, members: Sequence[tuple[str, Cond]], pad: str) -> list[str]:
    """Statements appending the id of every member that matches (needs ``e`` and ``out``).

    As goldrush's ``union``: what members share is evaluated once. Fields used by two or
    more members are read once at the top, and members whose conjuncts start alike share
    one ``if`` for the common start (a prefix tree of conjuncts).
    """
    uses: dict[Path, int] = {}
    for _, cond in members:
        for p in dict.fromkeys(_paths(cond)):
            uses[p] = uses.get(p, 0) + 1
    top = _Scope(program)
    lines: list[str] = []
    for p, n in uses.items():
        if n > 1:
            for i in range(1, len(p) + 1):
                if p[:i] not in top.bound:  # parents first; a statement, not a walrus
                    lines.append(pad + top.read(p[:i])[1:-1].replace(" := ", " = ", 1))  # noqa: PERF401
    rows = [(pid, conjuncts(cond)) for pid, cond in members]
    lines += _trie(program, rows, top.bound, pad, 0)
    return lines


_MAX_SHARED_DEPTH = 8  # each level is a nested try; CPython allows 20 nested blocks


def _trie(
    program: Program,
    rows: list[tuple[str, list[Cond]]],
    bound: dict[Path, str],
    pad: str,
    depth: int,
) -> list[str]:
    lines: list[str] = []
    rows = sorted(rows, key=lambda r: _node_key(r[1][0]) if r[1] else b"")
    i = 0
    while i < len(rows):
        pid, conds = rows[i]
        j = i + 1
        if conds and depth < _MAX_SHARED_DEPTH:
            first = _node_key(conds[0])
            while j < len(rows) and rows[j][1] and _node_key(rows[j][1][0]) == first:
                j += 1
        scope = _Scope(program, bound)
        if j - i > 1:  # rows i..j share their first conjunct
            test = chain(conds[:1], scope)
            inner = [(p, c[1:]) for p, c in rows[i:j]]
            body = _trie(program, inner, scope.bound, pad + "        ", depth + 1)
            lines += [f"{pad}try:", f"{pad}    if {test}:", *body]
        else:
            test = chain(conds, scope)
            lines += [f"{pad}try:", f"{pad}    if {test}:", f"{pad}        out.append({pid!r})"]
        lines += [f"{pad}except TypeError:", f"{pad}    pass"]
        i = j
    return lines


def _node_key(node: Cond) -> bytes:
    return _KEY_ENCODER.encode(node)


_KEY_ENCODER = msgspec.msgpack.Encoder()


def compile_group(program: Program, members: Sequence[tuple[str, Cond]]) -> str:
    """Add a ``g(event, out)`` running :func:`group_lines`; returns its name."""
    name = program.new_name("group")
    lines = [f"def {name}(e, out):", *group_lines(program, members, "    "), "    pass"]
    program.add("\n".join(lines) + "\n")
    return name


def finish(program: Program) -> dict[str, object]:
    """Compile the program; the namespace returned holds every function added."""
    return program.build()


def compile_query(cond: Cond) -> Matcher:
    """One compiled matcher for one (already reduced) condition."""
    program = Program()
    name = compile_matcher(program, cond)
    fn: Matcher = finish(program)[name]  # type: ignore[assignment]
    return fn
