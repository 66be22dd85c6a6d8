"""The policy-agent ABI: what a wasm module must export and where things live in its memory.

A module is a policy agent when it imports nothing and exports

- ``memory``: its linear memory (fixed size for compiled policies: min == max),
- ``evaluate(n: i32) -> i32``: decide input rows ``0..n-1``; returns how many were
  transforms (>= 0) or a negative number when ``n`` exceeds its batch capacity,
- ``cyb_manifest_ptr`` / ``cyb_manifest_len``: immutable i32 globals locating a JSON
  :class:`Manifest` in memory that says where every region is and what each code means.

Input is row-major: row ``i`` is at ``input_offset + i * 8 * len(columns)``, one 8-byte
little-endian value per column (ts/recv/slot: i64, field: f64).
Each output is a u16 decision code ``action | rule_id << 2`` (action: allow 0, deny 1, flag 2,
transform 3; rule_id 0 = the default). The j-th transform of a call writes an entry at
``transform_offset + j * 8 * (1 + len(targets))``: the row index (i64), then one f64 per
target (only the rule's own targets are meaningful). docs/policy-language.md is the full text.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from wasm.errors import AbiError

ABI_VERSION = 1
EVALUATE = "evaluate"
MEMORY = "memory"
MANIFEST_PTR = "cyb_manifest_ptr"
MANIFEST_LEN = "cyb_manifest_len"
MAX_MANIFEST_BYTES = 1 << 20
ROW_SLOT = 8


class Column(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One input column, 8 bytes per row: ``ts``/``recv`` (i64 ms), ``slot`` (i64 device slot),
    or ``field`` (f64 value of ``values[name]``, NaN when missing)."""

    kind: Literal["ts", "recv", "slot", "field"]
    name: str = ""


class RuleInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    action: Literal["allow", "deny", "flag", "transform"]
    reason: str
    targets: list[int] = []
    """Indices into ``Manifest.targets`` this rule assigns (transform only)."""


class Predicate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A device/zone test; the host stores its result as bit ``i`` of the device's table entry."""

    subject: Literal["device", "zone"]
    op: Literal["==", "!=", "in", "matches"]
    values: list[str]


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    abi: int
    policy: str
    version: int
    default_action: Literal["allow", "deny"]
    default_reason: str
    rules: list[RuleInfo]
    batch_capacity: int
    device_capacity: int
    input_offset: int
    columns: list[Column]
    output_offset: int
    transform_offset: int
    targets: list[str]
    device_table_offset: int
    predicates: list[Predicate]
    rate_offset: int
    rate_windows: list[int]
    fuel_per_row: int = 0
    """The compiler's upper bound on fuel one row costs (0: unknown). The host budgets
    twice this, never more than its own limit, so a runaway stops sooner."""

    @property
    def row_stride(self) -> int:
        return ROW_SLOT * len(self.columns)

    def regions(self) -> list[tuple[str, int, int]]:
        """(name, offset, size) of every region the host reads or writes."""
        cap, dev = self.batch_capacity, self.device_capacity
        return [
            ("input", self.input_offset, cap * self.row_stride),
            ("output", self.output_offset, cap * 2),
            ("transform", self.transform_offset, cap * ROW_SLOT * (1 + len(self.targets))),
            ("device table", self.device_table_offset, dev * 8),
            ("rate tables", self.rate_offset, dev * 16 * len(self.rate_windows)),
        ]

    def check(self, memory_bytes: int) -> None:
        """Refuse a manifest the host cannot trust to stay inside ``memory_bytes``."""
        if self.abi != ABI_VERSION:
            raise AbiError(f"agent speaks ABI {self.abi}; this host speaks {ABI_VERSION}")
        if not 1 <= self.batch_capacity <= 1 << 16:
            raise AbiError(f"batch_capacity {self.batch_capacity} is outside 1..65536")
        if not 1 <= self.device_capacity <= 1 << 20:
            raise AbiError(f"device_capacity {self.device_capacity} is outside 1..1048576")
        if len(self.rules) > 16_383:
            raise AbiError(f"{len(self.rules)} rules do not fit a 14-bit rule id")
        if len(self.predicates) > 64:
            raise AbiError(f"{len(self.predicates)} device/zone predicates exceed 64 bits")
        for name, offset, size in self.regions():
            if offset < 0 or offset % 8 or offset + size > memory_bytes:
                raise AbiError(
                    f"{name} region [{offset}, {offset + size}) is misaligned or outside "
                    f"the agent's {memory_bytes}-byte memory"
                )
        for rule in self.rules:
            if any(not 0 <= t < len(self.targets) for t in rule.targets):
                raise AbiError(f"rule {rule.name!r} names a transform target that does not exist")


def decode_manifest(raw: bytes) -> Manifest:
    try:
        return msgspec.json.decode(raw, type=Manifest)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec: bad UTF-8 in a str
        raise AbiError(f"agent manifest is not valid: {exc}") from exc


def decision_code(action: str, rule_id: int) -> int:
    return {"allow": 0, "deny": 1, "flag": 2, "transform": 3}[action] | (rule_id << 2)
