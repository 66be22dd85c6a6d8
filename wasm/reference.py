"""A plain-Python interpreter of the policy language: the oracle for the compiler.

It walks the syntax tree for each reading, with no layout, no codes and no wasm, so when it
and a compiled agent disagree on any input the compiler is wrong. It keeps the same per-device
rate state an agent keeps. Slow by design; never used on the ingest path.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from typing import Any

from amcp.wire.telemetry import Reading
from wasm import ast
from wasm.decision import Decision, make_decision
from wasm.values import NAN, as_number, clamp_i64

ZoneOf = Callable[[str], str]


def str_test(test: ast.StrTest, device: str, zone: str) -> bool:
    """Evaluate a device/zone test; the host runs this once per device to fill its bit table."""
    subject = device if test.subject == "device" else zone
    match test.op:
        case "==":
            return subject == test.values[0]
        case "!=":
            return subject != test.values[0]
        case "in":
            return subject in test.values
        case "matches":
            return fnmatch.fnmatchcase(subject, test.values[0])
    raise AssertionError(test.op)


def ieee_div(a: float, b: float) -> float:
    """IEEE-754 division, as ``f64.div`` does it (Python raises on a zero divisor)."""
    if b != 0.0 or math.isnan(b):
        return a / b
    if a == 0.0 or math.isnan(a):
        return NAN
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def ieee_min(a: float, b: float) -> float:
    """``f64.min``: NaN if either is NaN, and -0.0 is smaller than +0.0."""
    if math.isnan(a) or math.isnan(b):
        return NAN
    if a == b == 0.0:
        return a if math.copysign(1.0, a) < 0 else b
    return min(b, a)


def ieee_max(a: float, b: float) -> float:
    """``f64.max``: NaN if either is NaN, and +0.0 is larger than -0.0."""
    if math.isnan(a) or math.isnan(b):
        return NAN
    if a == b == 0.0:
        return a if math.copysign(1.0, a) > 0 else b
    return max(b, a)


class ReferenceInterpreter:
    """Evaluates a parsed policy reading by reading, keeping per-device rate windows."""

    def __init__(self, policy: ast.Policy, zone_of: ZoneOf | None = None) -> None:
        self.policy = policy
        self.zone_of: ZoneOf = zone_of or (lambda _device: "")
        self._windows: dict[tuple[str, int], tuple[int, int]] = {}
        self._rates = sorted(
            {n.window_ms for r in policy.rules for n in _walk_rule(r) if isinstance(n, ast.Rate)}
        )

    def evaluate_batch(self, readings: Iterable[Reading]) -> list[Decision]:
        return [self.evaluate(r) for r in readings]

    def evaluate(self, reading: Reading) -> Decision:
        ts = clamp_i64(reading.ts_ms)
        rates: dict[int, float] = {}
        for window in self._rates:  # every window counts every reading, matched or not
            index = ts // window
            last, count = self._windows.get((reading.device, window), (0, 0))
            count = count + 1 if index == last else 1
            self._windows[reading.device, window] = (index, count)
            rates[window] = float(count)
        env = _Env(reading, ts, self.zone_of(reading.device), rates)
        for rule_id, rule in enumerate(self.policy.rules, start=1):
            if env.test(rule.when):
                values = None
                if rule.action == "transform":
                    values = dict(reading.values)
                    values.update({f: env.num(e) for f, e in rule.assigns})
                return make_decision(rule.action, rule_id, rule.name, rule.reason, values)
        return make_decision(self.policy.default, 0, None, self.policy.default_reason, None)


class _Env:
    def __init__(self, reading: Reading, ts: int, zone: str, rates: dict[int, float]) -> None:
        self.reading = reading
        self.ts = ts
        self.zone = zone
        self.rates = rates

    def num(self, node: ast.NumExpr) -> float:  # noqa: C901, PLR0911 - one arm per node type
        match node:
            case ast.Num(value):
                return value
            case ast.Field(name):
                return as_number(self.reading.values.get(name, NAN))
            case ast.Clock("hour"):
                return float(self.ts % 86_400_000 // 3_600_000)
            case ast.Clock("minute"):
                return float(self.ts % 3_600_000 // 60_000)
            case ast.Clock("weekday"):
                return float((self.ts // 86_400_000 + 3) % 7)
            case ast.Lag():
                recv = float(clamp_i64(self.reading.received_ms))
                return recv - float(self.ts)
            case ast.Rate(window):
                return self.rates[window]
            case ast.Neg(operand):
                return -self.num(operand)
            case ast.Arith(op, left, right):
                return _ARITH[op](self.num(left), self.num(right))
            case ast.Call("abs", (arg,)):
                return abs(self.num(arg))
            case ast.Call("min", (a, b)):
                return ieee_min(self.num(a), self.num(b))
            case ast.Call("max", (a, b)):
                return ieee_max(self.num(a), self.num(b))
        raise AssertionError(node)

    def test(self, node: ast.BoolExpr) -> bool:  # noqa: PLR0911 - one arm per node type
        match node:
            case ast.Const(value):
                return value
            case ast.Compare(op, left, right):
                return _CMP[op](self.num(left), self.num(right))
            case ast.Has(name):
                return not math.isnan(as_number(self.reading.values.get(name, NAN)))
            case ast.StrTest():
                return str_test(node, self.reading.device, self.zone)
            case ast.Not(operand):
                return not self.test(operand)
            case ast.And(left, right):
                return self.test(left) and self.test(right)
            case ast.Or(left, right):
                return self.test(left) or self.test(right)
        raise AssertionError(node)


_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": ieee_div,
}
_CMP: dict[str, Callable[[float, float], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _walk_rule(rule: ast.Rule) -> Iterable[Any]:
    yield from walk(rule.when)
    for _, expr in rule.assigns:
        yield from walk(expr)


def walk(node: Any) -> Iterable[Any]:
    """Every node under ``node``, itself included."""
    yield node
    for child in getattr(node, "__dict__", {}).values():
        if isinstance(child, tuple):
            for item in child:
                yield from walk(item)
        elif isinstance(child, (*ast.NUM_NODES, *ast.BOOL_NODES)):
            yield from walk(child)
