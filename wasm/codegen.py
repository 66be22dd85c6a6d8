"""Policy syntax tree → WebAssembly text (WAT) plus the manifest the host reads back.

The generated ``evaluate`` is one loop over rows with straight-line code per row: load the
columns the policy uses, update every rate window (so counts never depend on which rule
matched), then test the rules in order inside one block and branch out on the first match.
``and``/``or`` evaluate both sides: nothing in an expression has effects or can trap, so this
gives the same answers as short-circuiting, with fewer branches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from wasm import abi, ast
from wasm.errors import PolicyCompileError
from wasm.reference import walk

DEFAULT_BATCH_CAPACITY = 1024
DEFAULT_DEVICE_CAPACITY = 4096
PAGE = 65_536
DAY_MS = 86_400_000
_CMP = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_ARITH = {"+": "add", "-": "sub", "*": "mul", "/": "div"}


def _f64(value: float) -> str:
    if math.isnan(value):
        return "(f64.const nan)"
    if math.isinf(value):
        return f"(f64.const {'-' if value < 0 else ''}inf)"
    return f"(f64.const {value.hex()})"


def _wat_bytes(data: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:02x}" for b in data)


def _align(value: int) -> int:
    return (value + 7) & ~7


class _Gen:
    def __init__(self, policy: ast.Policy) -> None:
        nodes = [n for rule in policy.rules for n in _rule_nodes(rule)]
        self.fields: list[str] = sorted(
            {n.name for n in nodes if isinstance(n, ast.Field)}
            | {n.field for n in nodes if isinstance(n, ast.Has)}
        )
        self.preds: list[ast.StrTest] = list(
            dict.fromkeys(n for n in nodes if isinstance(n, ast.StrTest))
        )
        if len(self.preds) > 64:
            raise PolicyCompileError(
                f"at most 64 distinct device/zone tests, found {len(self.preds)}"
            )
        self.windows: list[int] = sorted({n.window_ms for n in nodes if isinstance(n, ast.Rate)})
        if len(self.windows) > 16:
            raise PolicyCompileError(f"at most 16 distinct rate windows, found {len(self.windows)}")
        self.clocks = {n.kind for n in nodes if isinstance(n, ast.Clock)}
        self.lag = any(isinstance(n, ast.Lag) for n in nodes)
        self.targets: list[str] = sorted({f for r in policy.rules for f, _ in r.assigns})

    def num(self, node: ast.NumExpr) -> str:  # noqa: PLR0911 - one arm per node type
        match node:
            case ast.Num(value):
                return _f64(value)
            case ast.Field(name):
                return f"(local.get $f{self.fields.index(name)})"
            case ast.Clock(kind):
                return f"(local.get ${kind})"
            case ast.Lag():
                return "(local.get $lag)"
            case ast.Rate(window):
                return f"(local.get $r{self.windows.index(window)})"
            case ast.Neg(operand):
                return f"(f64.neg {self.num(operand)})"
            case ast.Arith(op, left, right):
                return f"(f64.{_ARITH[op]} {self.num(left)} {self.num(right)})"
            case ast.Call(func, args):
                return f"(f64.{func} {' '.join(self.num(a) for a in args)})"
        raise AssertionError(node)

    def test(self, node: ast.BoolExpr) -> str:  # noqa: PLR0911 - one arm per node type
        match node:
            case ast.Const(value):
                return f"(i32.const {int(value)})"
            case ast.Compare(op, left, right):
                return f"(f64.{_CMP[op]} {self.num(left)} {self.num(right)})"
            case ast.Has(name):
                f = f"(local.get $f{self.fields.index(name)})"
                return f"(f64.eq {f} {f})"
            case ast.StrTest():
                bit = self.preds.index(node)
                shifted = f"(i64.shr_u (local.get $bits) (i64.const {bit}))"
                return f"(i32.wrap_i64 (i64.and {shifted} (i64.const 1)))"
            case ast.Not(operand):
                return f"(i32.eqz {self.test(operand)})"
            case ast.And(left, right):
                return f"(i32.and {self.test(left)} {self.test(right)})"
            case ast.Or(left, right):
                return f"(i32.or {self.test(left)} {self.test(right)})"
        raise AssertionError(node)


def _rule_nodes(rule: ast.Rule) -> list[object]:
    nodes = list(walk(rule.when))
    for _, expr in rule.assigns:
        nodes.extend(walk(expr))
    return nodes


@dataclass(frozen=True)
class _Layout:
    inputs: int
    columns: Mapping[tuple[str, str], int]
    """(kind, name) → byte offset of that column within a row."""
    device_table: int
    rates: int
    output: int
    transforms: int
    tx_entry: int
    end: int


def _layout(g: _Gen, columns: list[abi.Column], batch: int, devices: int) -> _Layout:
    rates = devices * 8  # the device table sits at 0
    inputs = rates + devices * 16 * len(g.windows)
    output = inputs + batch * abi.ROW_SLOT * len(columns)
    transforms = _align(output + batch * 2)
    tx_entry = 8 + 8 * len(g.targets)  # row index (i64), then one f64 per target
    offsets: dict[tuple[str, str], int] = {(c.kind, c.name): 8 * i for i, c in enumerate(columns)}
    end = transforms + batch * tx_entry
    return _Layout(inputs, offsets, 0, rates, output, transforms, tx_entry, end)


_HOUR_MINUTE = f"""(local.set $q (i64.rem_s (local.get $ts) (i64.const {DAY_MS})))
        (if (i64.lt_s (local.get $q) (i64.const 0))
          (then (local.set $q (i64.add (local.get $q) (i64.const {DAY_MS})))))
        (local.set $hour (f64.convert_i64_s (i64.div_u (local.get $q) (i64.const 3600000))))
        (local.set $minute (f64.convert_i64_s
          (i64.rem_u (i64.div_u (local.get $q) (i64.const 60000)) (i64.const 60))))"""
_WEEKDAY = """(local.set $q (i64.rem_s (i64.add (local.get $q) (i64.const 3)) (i64.const 7)))
        (if (i64.lt_s (local.get $q) (i64.const 0))
          (then (local.set $q (i64.add (local.get $q) (i64.const 7)))))
        (local.set $weekday (f64.convert_i64_s (local.get $q)))"""
_RATE = """(local.set $p (i32.add (i32.const {base}) (i32.shl (local.get $slot) (i32.const 4))))
        (local.set $cnt (if (result i64) (i64.eq (i64.load (local.get $p)) (local.get $q))
          (then (i64.add (i64.load offset=8 (local.get $p)) (i64.const 1))) (else (i64.const 1))))
        (i64.store (local.get $p) (local.get $q))
        (i64.store offset=8 (local.get $p) (local.get $cnt))
        (local.set $r{k} (f64.convert_i64_s (local.get $cnt)))"""
_LOCALS = """(local $row i32) (local $in i32) (local $slot i32) (local $p i32) (local $code i32)
    (local $tx i32) (local $ts i64) (local $q i64) (local $cnt i64) (local $bits i64)
    (local $lag f64) (local $hour f64) (local $minute f64) (local $weekday f64)"""


def _prelude(g: _Gen, lay: _Layout, device_capacity: int) -> list[str]:
    """Per-row loads and derived values: columns, clock, lag, device bits, rate windows."""
    col = lay.columns
    stride = 8 * len(col)
    row_start = (
        f"(i32.add (i32.const {lay.inputs}) (i32.mul (local.get $row) (i32.const {stride})))"
    )
    body = [f"(local.set $in {row_start})"]
    if ("ts", "") in col:
        body.append(f"(local.set $ts (i64.load offset={col['ts', '']} (local.get $in)))")
    if g.lag:
        recv = f"(i64.load offset={col['recv', '']} (local.get $in))"
        body.append(
            f"(local.set $lag (f64.sub (f64.convert_i64_s {recv})"
            " (f64.convert_i64_s (local.get $ts))))"
        )
    if ("slot", "") in col:
        slot = f"(i32.wrap_i64 (i64.load offset={col['slot', '']} (local.get $in)))"
        body.append(f"(local.set $slot (i32.rem_u {slot} (i32.const {device_capacity})))")
        body.append(
            f"(local.set $bits (i64.load offset={lay.device_table}"
            " (i32.shl (local.get $slot) (i32.const 3))))"
        )
    body += [
        f"(local.set $f{i} (f64.load offset={col['field', name]} (local.get $in)))"
        for i, name in enumerate(g.fields)
    ]
    if g.clocks:
        body.append(_HOUR_MINUTE)
        if "weekday" in g.clocks:
            body += [_floor_div("$ts", DAY_MS), _WEEKDAY]
    for k, window in enumerate(g.windows):
        base = lay.rates + k * device_capacity * 16
        body += [_floor_div("$ts", window), _RATE.format(base=base, k=k)]
    return body


def _rules(g: _Gen, policy: ast.Policy, lay: _Layout) -> list[str]:
    """The rules in order inside ``$decided``; the first match sets ``$code`` and leaves."""
    body = ["(block $decided"]
    for rule_id, rule in enumerate(policy.rules, start=1):
        then = [f"(local.set $code (i32.const {abi.decision_code(rule.action, rule_id)}))"]
        if rule.assigns:
            then.append(
                f"(local.set $p (i32.add (i32.const {lay.transforms})"
                f" (i32.mul (local.get $tx) (i32.const {lay.tx_entry}))))"
            )
            then.append("(i64.store (local.get $p) (i64.extend_i32_u (local.get $row)))")
            then.extend(
                f"(f64.store offset={8 + 8 * g.targets.index(f)} (local.get $p) {g.num(e)})"
                for f, e in rule.assigns
            )
            then.append("(local.set $tx (i32.add (local.get $tx) (i32.const 1)))")
        then.append("(br $decided)")
        body.append(f"  (if {g.test(rule.when)} (then {' '.join(then)}))")
    body.append(f"  (local.set $code (i32.const {abi.decision_code(policy.default, 0)})))")
    body.append(
        f"(i32.store16 offset={lay.output} (i32.shl (local.get $row) (i32.const 1))"
        " (local.get $code))"
    )
    return body


def generate(
    policy: ast.Policy,
    batch_capacity: int = DEFAULT_BATCH_CAPACITY,
    device_capacity: int = DEFAULT_DEVICE_CAPACITY,
) -> tuple[str, abi.Manifest]:
    """Compile ``policy`` to WAT text and the manifest embedded in it."""
    g = _Gen(policy)
    columns: list[abi.Column] = []
    if g.clocks or g.windows or g.lag:
        # recv always rides along with ts: the host then fills the head of a row (ts, recv,
        # slot) from one contiguous slice, which keeps the single-reading path loop-free
        columns += [abi.Column("ts"), abi.Column("recv")]
    if g.preds or g.windows:
        columns.append(abi.Column("slot"))
    columns.extend(abi.Column("field", f) for f in g.fields)
    lay = _layout(g, columns, batch_capacity, device_capacity)
    rules = [
        abi.RuleInfo(r.name, r.action, r.reason, [g.targets.index(f) for f, _ in r.assigns])
        for r in policy.rules
    ]
    body = _prelude(g, lay, device_capacity) + _rules(g, policy, lay)
    # every instruction is written folded, one "(" each, and costs at most one unit of fuel
    fuel_per_row = sum(line.count("(") for line in body) + 16
    manifest = abi.Manifest(
        abi=abi.ABI_VERSION, policy=policy.name, version=policy.version,
        default_action=policy.default, default_reason=policy.default_reason, rules=rules,
        batch_capacity=batch_capacity, device_capacity=device_capacity,
        input_offset=lay.inputs, columns=columns,
        output_offset=lay.output, transform_offset=lay.transforms, targets=g.targets,
        device_table_offset=lay.device_table,
        predicates=[abi.Predicate(p.subject, p.op, list(p.values)) for p in g.preds],
        rate_offset=lay.rates, rate_windows=g.windows, fuel_per_row=fuel_per_row,
    )  # fmt: skip
    manifest_bytes = msgspec.json.encode(manifest)
    manifest_off = _align(lay.end)
    pages = max(1, -(-(manifest_off + len(manifest_bytes)) // PAGE))
    locals_ = [_LOCALS]
    locals_ += [f"(local $f{i} f64)" for i in range(len(g.fields))]
    locals_ += [f"(local $r{k} f64)" for k in range(len(g.windows))]
    row_body = "\n        ".join(body)
    return (
        f"""(module
  (memory (export "{abi.MEMORY}") {pages} {pages})
  (global (export "{abi.MANIFEST_PTR}") i32 (i32.const {manifest_off}))
  (global (export "{abi.MANIFEST_LEN}") i32 (i32.const {len(manifest_bytes)}))
  (data (i32.const {manifest_off}) "{_wat_bytes(manifest_bytes)}")
  (func (export "{abi.EVALUATE}") (param $n i32) (result i32)
    {" ".join(locals_)}
    (if (i32.gt_u (local.get $n) (i32.const {batch_capacity})) (then (return (i32.const -1))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $row) (local.get $n)))
        {row_body}
        (local.set $row (i32.add (local.get $row) (i32.const 1)))
        (br $next)))
    (local.get $tx)))
""",
        manifest,
    )


def _floor_div(var: str, divisor: int) -> str:
    """Set ``$q`` to floor(var / divisor), as Python's ``//`` does for negative numbers."""
    return (
        f"(local.set $q (i64.div_s (local.get {var}) (i64.const {divisor})))"
        f"(if (i64.lt_s (i64.rem_s (local.get {var}) (i64.const {divisor})) (i64.const 0))"
        " (then (local.set $q (i64.sub (local.get $q) (i64.const 1)))))"
    )
