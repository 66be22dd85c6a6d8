"""The policy language's syntax tree, and its printer back to source.

Nodes are frozen dataclasses compared by value, so ``parse(to_source(p)) == p`` is a property
the tests can check. Numeric nodes evaluate to an IEEE-754 double; boolean nodes to true/false.
A missing or non-numeric field is NaN, so every comparison with it is false except ``!=``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

Action = Literal["allow", "deny", "flag", "transform"]
ClockKind = Literal["hour", "minute", "weekday"]
ArithOp = Literal["+", "-", "*", "/"]
CmpOp = Literal["==", "!=", "<", "<=", ">", ">="]
StrSubject = Literal["device", "zone"]
StrOp = Literal["==", "!=", "in", "matches"]
FuncName = Literal["abs", "min", "max"]


@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Field:
    """A value of the reading's ``values`` map, as a number (NaN when missing or not numeric)."""

    name: str


@dataclass(frozen=True)
class Clock:
    """Hour (0-23), minute (0-59) or weekday (Monday 0) of the reading's ``ts_ms``, in UTC."""

    kind: ClockKind


@dataclass(frozen=True)
class Lag:
    """``received_ms - ts_ms`` in milliseconds: how old the reading was when it arrived."""


@dataclass(frozen=True)
class Rate:
    """Readings of this device in the current fixed ``window_ms`` window, this one included."""

    window_ms: int


@dataclass(frozen=True)
class Neg:
    operand: NumExpr


@dataclass(frozen=True)
class Arith:
    op: ArithOp
    left: NumExpr
    right: NumExpr


@dataclass(frozen=True)
class Call:
    func: FuncName
    args: tuple[NumExpr, ...]


@dataclass(frozen=True)
class Const:
    value: bool


@dataclass(frozen=True)
class Compare:
    op: CmpOp
    left: NumExpr
    right: NumExpr


@dataclass(frozen=True)
class Has:
    field: str


@dataclass(frozen=True)
class StrTest:
    """A test on the device id or its zone; evaluated once per device by the host."""

    subject: StrSubject
    op: StrOp
    values: tuple[str, ...]


@dataclass(frozen=True)
class Not:
    operand: BoolExpr


@dataclass(frozen=True)
class And:
    left: BoolExpr
    right: BoolExpr


@dataclass(frozen=True)
class Or:
    left: BoolExpr
    right: BoolExpr


NumExpr = Num | Field | Clock | Lag | Rate | Neg | Arith | Call
BoolExpr = Const | Compare | Has | StrTest | Not | And | Or
NUM_NODES = (Num, Field, Clock, Lag, Rate, Neg, Arith, Call)
BOOL_NODES = (Const, Compare, Has, StrTest, Not, And, Or)


@dataclass(frozen=True)
class Rule:
    name: str
    when: BoolExpr
    action: Action
    reason: str
    assigns: tuple[tuple[str, NumExpr], ...] = ()


@dataclass(frozen=True)
class Policy:
    name: str
    version: int
    default: Literal["allow", "deny"]
    default_reason: str
    rules: tuple[Rule, ...]


# --- printer -----------------------------------------------------------------------------

IDENT_KEYWORDS = frozenset(
    [
        *("policy", "version", "default", "rule", "when", "then", "because"),
        *("allow", "deny", "flag", "transform", "and", "or", "not", "true", "false"),
        *("in", "matches", "has", "device", "zone", "hour", "minute", "weekday"),
        *("rate", "lag_ms", "abs", "min", "max", "field"),
    ]
)


def _field_src(name: str) -> str:
    if name.isidentifier() and name.isascii() and name not in IDENT_KEYWORDS:
        return name
    return f"field({_str(name)})"


def _str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _duration(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def num_src(node: NumExpr) -> str:  # noqa: PLR0911 - one arm per node type
    match node:
        case Num(value):
            return repr(value)
        case Field(name):
            return _field_src(name)
        case Clock(kind):
            return kind
        case Lag():
            return "lag_ms"
        case Rate(window):
            return f"rate({_duration(window)})"
        case Neg(operand):
            return f"-({num_src(operand)})"
        case Arith(op, left, right):
            return f"({num_src(left)} {op} {num_src(right)})"
        case Call(func, args):
            return f"{func}({', '.join(num_src(a) for a in args)})"
    raise AssertionError(node)


def bool_src(node: BoolExpr) -> str:  # noqa: PLR0911 - one arm per node type
    match node:
        case Const(value):
            return "true" if value else "false"
        case Compare(op, left, right):
            return f"{num_src(left)} {op} {num_src(right)}"
        case Has(name):
            return f"has {_field_src(name)}"
        case StrTest(subject, "in", values):
            return f"{subject} in [{', '.join(_str(v) for v in values)}]"
        case StrTest(subject, op, values):
            return f"{subject} {op} {_str(values[0])}"
        case Not(operand):
            return f"not ({bool_src(operand)})"
        case And(left, right):
            return f"({bool_src(left)} and {bool_src(right)})"
        case Or(left, right):
            return f"({bool_src(left)} or {bool_src(right)})"
    raise AssertionError(node)


def to_source(policy: Policy) -> str:
    """Print ``policy`` as source text that parses back to an equal tree."""
    lines = [f"policy {_str(policy.name)} version {policy.version}"]
    lines.append(f"default {policy.default} because {_str(policy.default_reason)}")
    for rule in policy.rules:
        action: str = rule.action
        if rule.assigns:
            action += " " + ", ".join(f"{_field_src(f)} = {num_src(e)}" for f, e in rule.assigns)
        lines.append(
            f"\nrule {rule.name}\n  when {bool_src(rule.when)}\n"
            f"  then {action}\n  because {_str(rule.reason)}"
        )
    return "\n".join(lines) + "\n"
