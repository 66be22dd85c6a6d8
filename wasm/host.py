"""Running policy agents under wasmtime: sandboxed, bounded, and cheap per reading.

One :class:`PolicyAgent` owns one store with one instance of one module. The store has a
fuel budget per call (``fuel_per_call + fuel_per_row * rows``) so a runaway agent is stopped
within that many wasm instructions; a memory limit, and room for exactly one instance,
memory and table. An agent that traps is re-instantiated from its compiled module before
the error reaches the caller, so the next call is served (its rate windows start over).

Readings are written row by row into the agent's memory with one ``struct.pack_into`` per
batch; decisions come back as u16 codes mapped through a table of shared
:class:`Decision` objects, so only transforms allocate.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import wasmtime

from amcp.wire.telemetry import Reading
from wasm import abi
from wasm._fastcall import FastCall
from wasm.ast import StrTest
from wasm.compiler import CompiledPolicy, compile_policy, compile_policy_file
from wasm.decision import Decision, make_decision
from wasm.errors import AbiError, AgentFaultError, ResourceLimitError
from wasm.reference import str_test
from wasm.sandbox import AgentLimits, engine, load_module
from wasm.values import NAN, as_number, clamp_i64

_GET = dict.get


class PolicyAgent:
    """A loaded policy agent. Like the wasmtime store under it, not thread-safe: use one agent
    from one thread (the gateway's event loop) or serialise calls yourself."""

    evaluate: Callable[[Reading], Decision]
    """Decide one reading (the batch path without its per-batch lists). An attribute, not a
    method: a closure over everything it touches, rebuilt whenever the instance is."""

    def __init__(
        self,
        module: wasmtime.Module,
        *,
        zones: Mapping[str, str] | Callable[[str], str] | None = None,
        limits: AgentLimits | None = None,
    ) -> None:
        self.module = module
        self.limits = limits or AgentLimits()
        self._zone_of = _zone_fn(zones)
        self._instantiate()

    @classmethod
    def load(
        cls,
        source: str | bytes | Path | CompiledPolicy,
        *,
        zones: Mapping[str, str] | Callable[[str], str] | None = None,
        limits: AgentLimits | None = None,
    ) -> PolicyAgent:
        """Load from policy source text, a ``.policy``/``.wasm`` path, wasm bytes or a compiled
        policy. A ``str`` naming an existing file is read as a path. Blocking (compiles)."""
        if isinstance(source, str) and "\n" not in source and Path(source).is_file():
            source = Path(source)
        if isinstance(source, Path):
            binary = (
                source.read_bytes()
                if source.suffix == ".wasm"
                else compile_policy_file(source).wasm
            )
        elif isinstance(source, CompiledPolicy):
            binary = source.wasm
        elif isinstance(source, bytes):
            binary = source
        else:
            binary = compile_policy(source).wasm
        return cls(load_module(binary), zones=zones, limits=limits)

    # -- set-up -----------------------------------------------------------------------------
    def _instantiate(self) -> None:
        lim = self.limits
        store = wasmtime.Store(engine())
        store.set_limits(memory_size=lim.memory_bytes, table_elements=lim.table_elements,
                         instances=1, tables=1, memories=1)  # fmt: skip
        store.set_fuel(lim.fuel_per_call)  # bounds a start function too
        try:
            instance = wasmtime.Instance(store, self.module, [])
        except wasmtime.Trap as exc:
            raise AgentFaultError(f"agent trapped while starting: {exc.message}") from exc
        except wasmtime.WasmtimeError as exc:
            raise ResourceLimitError(
                f"agent could not be instantiated within limits: {exc}"
            ) from exc
        exports = instance.exports(store)
        memory = exports[abi.MEMORY]
        assert isinstance(memory, wasmtime.Memory)
        mem_type = memory.type(store)
        self._growable = mem_type.limits.max != mem_type.limits.min
        ptr, length = exports[abi.MANIFEST_PTR], exports[abi.MANIFEST_LEN]
        assert isinstance(ptr, wasmtime.Global)
        assert isinstance(length, wasmtime.Global)
        start, size = ptr.value(store), length.value(store)
        if not (isinstance(start, int) and isinstance(size, int)):
            raise AbiError("manifest globals must be i32")
        if not (
            start >= 0
            and 0 < size <= abi.MAX_MANIFEST_BYTES
            and start + size <= memory.data_len(store)
        ):
            raise AbiError(f"manifest [{start}, {start + size}) is outside the agent's memory")
        manifest = abi.decode_manifest(bytes(memory.read(store, start, start + size)))
        manifest.check(memory.data_len(store))
        evaluate = exports[abi.EVALUATE]
        assert isinstance(evaluate, wasmtime.Func)
        self._store, self._memory, self.manifest = store, memory, manifest
        self._call = FastCall(store, evaluate)
        self.evaluate_func = evaluate  # the generic path, for benchmarks and tests
        self._map_memory()
        self._prepare(manifest)

    def _map_memory(self) -> None:
        store, memory = self._store, self._memory
        self._base = ctypes.addressof(memory.data_ptr(store).contents)
        buf = (ctypes.c_ubyte * memory.data_len(store)).from_address(self._base)
        self._mem = memoryview(buf).cast("B")
        m = self.manifest
        self._codes = self._mem[m.output_offset : m.output_offset + 2 * m.batch_capacity].cast("H")

    def _remap(self) -> None:
        """After a call that may have grown memory: new views, and a single path bound to them."""
        self._map_memory()
        self._bind_single()

    def _prepare(self, m: abi.Manifest) -> None:
        self._chunk = min(m.batch_capacity, m.device_capacity)
        self._columns = [(c.kind, c.name) for c in m.columns]
        self._rowfmt = "".join("d" if k == "field" else "q" for k, _ in self._columns)
        self._packers: dict[int, struct.Struct] = {}
        self._preds = [StrTest(p.subject, p.op, tuple(p.values)) for p in m.predicates]
        self._slots: dict[str, int] = {}
        self._table: dict[int, Decision] = {
            abi.decision_code(m.default_action, 0): make_decision(
                m.default_action, 0, None, m.default_reason, None
            )
        }
        for rule_id, rule in enumerate(m.rules, start=1):
            self._table[abi.decision_code(rule.action, rule_id)] = make_decision(
                rule.action, rule_id, rule.name, rule.reason, None
            )
        self._tx_entry = struct.Struct(f"<q{len(m.targets)}d")
        self._assigned = {
            rule_id: [(t, m.targets[t]) for t in rule.targets]
            for rule_id, rule in enumerate(m.rules, start=1)
        }
        self._in_off = m.input_offset
        self._pool = self.limits.pool_calls
        kinds = [k for k, _ in self._columns]
        names = tuple(n for k, n in self._columns if k == "field")
        head = kinds[: len(kinds) - len(names)]
        order = ["ts", "recv", "slot"]
        # the compiler's column orders (a slice of ts, recv, slot; then fields) get a
        # loop-free row builder; any other order a manifest declares takes _row_of
        self._canonical: tuple[int, int, bool, tuple[str, ...]] | None = None
        for start in range(3):
            if head == order[start : start + len(head)] and kinds[len(head) :] == ["field"] * len(
                names
            ):
                self._canonical = (start, start + len(head), "slot" in head, names)
                break
        self._pack_row = struct.Struct("<" + self._rowfmt).pack_into
        self._fuel1 = self.fuel_budget(1)
        self._bind_single()

    def set_zones(self, zones: Mapping[str, str] | Callable[[str], str] | None) -> None:
        """Replace the device → zone lookup; device tests are recomputed on next sight."""
        self._zone_of = _zone_fn(zones)
        self._forget_devices()

    def _forget_devices(self) -> None:
        m = self.manifest
        ctypes.memset(self._base + m.device_table_offset, 0, m.device_capacity * 8)
        ctypes.memset(self._base + m.rate_offset, 0, m.device_capacity * 16 * len(m.rate_windows))
        self._slots.clear()

    def _intern(self, devices: Sequence[str]) -> None:
        new = [d for d in dict.fromkeys(devices) if d not in self._slots]
        if len(self._slots) + len(new) > self.manifest.device_capacity:
            self._forget_devices()
            new = list(dict.fromkeys(devices))
        table = self.manifest.device_table_offset
        for device in new:
            slot = self._slots[device] = len(self._slots)
            zone = self._zone_of(device)
            bits = sum(1 << i for i, p in enumerate(self._preds) if str_test(p, device, zone))
            struct.pack_into("<Q", self._mem, table + 8 * slot, bits)

    # -- evaluation ---------------------------------------------------------------------------
    def _bind_single(self) -> None:
        """Build the single-reading path as a closure over everything it touches (the hot
        path: local names instead of attribute lookups). Rebuilt on every (re)instantiation."""
        slots, intern, pack = self._slots, self._intern, self._pack_row
        mem, in_off, codes, get = self._mem, self._in_off, self._codes, self._table.get
        call = self._call.single(self._fuel1, self._pool)
        start, stop, slot_col, names = self._canonical or (0, 0, False, ())
        nans = (NAN,) * len(names)
        canonical, row_of, sanitize = self._canonical is not None, self._row_of, self._sanitize

        def decide(reading: Reading) -> Decision:
            if canonical:
                slot = 0
                if slot_col:
                    slot = slots.get(reading.device, -1)
                    if slot < 0:
                        intern((reading.device,))
                        slot = slots[reading.device]
                head = (reading.ts_ms, reading.received_ms, slot)[start:stop]
                row = (*head, *map(reading.values.get, names, nans))
            else:
                row = tuple(row_of(reading))
            try:
                pack(mem, in_off, *row)
            except struct.error:
                pack(mem, in_off, *(c[0] for c in sanitize([[v] for v in row])))
            try:
                transforms = call(1)
            except AgentFaultError:
                self._reset()
                raise
            if self._growable:
                self._remap()
                return self._finish_one(reading, transforms)
            decision = get(codes[0])
            if decision is None or transforms:
                return self._finish_one(reading, transforms)
            return decision

        self.evaluate = decide

    def fuel_budget(self, rows: int) -> int:
        """Fuel one call of ``rows`` rows may burn before it is stopped as a runaway."""
        per_row = self.limits.fuel_per_row
        if self.manifest.fuel_per_row > 0:
            per_row = min(per_row, 2 * self.manifest.fuel_per_row)
        return self.limits.fuel_per_call + per_row * rows

    def _row_of(self, reading: Reading) -> list[Any]:
        """One reading's row for any column order a manifest may declare."""
        row: list[Any] = []
        for kind, name in self._columns:
            if kind == "field":
                row.append(reading.values.get(name, NAN))
            elif kind == "ts":
                row.append(reading.ts_ms)
            elif kind == "recv":
                row.append(reading.received_ms)
            else:
                if reading.device not in self._slots:
                    self._intern((reading.device,))
                row.append(self._slots[reading.device])
        return row

    def _finish_one(self, reading: Reading, transforms: int) -> Decision:
        """The single path's rare cases: transforms, growable memory, undeclared codes."""
        code = self._codes[0]
        if code not in self._table:
            raise AgentFaultError(f"agent returned decision code {code}, which it never declared")
        if transforms < 0:
            raise AgentFaultError(f"agent refused a single row (returned {transforms})")
        shared = self._table[code]
        if transforms == 1 and shared.action == "transform":  # the common case, inline
            row, *out = self._tx_entry.unpack_from(self._mem, self.manifest.transform_offset)
            if row != 0:
                raise AgentFaultError(f"agent listed row {row} as a transform of a single row")
            values = dict(reading.values)
            for t, name in self._assigned[shared.rule_id]:
                values[name] = out[t]
            return Decision("transform", shared.reason, shared.rule_id, shared.rule, values)
        decisions = [shared]
        self._apply_transforms((reading,), decisions, transforms)
        return decisions[0]

    def evaluate_batch(self, readings: Sequence[Reading]) -> list[Decision]:
        """Decide every reading, in order. On :class:`AgentFaultError` no decision is returned for
        this call and the agent has been reset."""
        step = self._chunk
        if len(readings) <= step:
            return self._run(readings)
        out: list[Decision] = []
        for start in range(0, len(readings), step):
            out += self._run(readings[start : start + step])
        return out

    def _encode(self, chunk: Sequence[Reading], n: int) -> list[list[Any]]:
        cols: list[list[Any]] = []
        values: list[dict[str, Any]] | None = None
        for kind, name in self._columns:
            if kind == "field":
                if values is None:
                    values = [r.values for r in chunk]
                cols.append(list(map(_GET, values, repeat(name, n), repeat(NAN, n))))
            elif kind == "ts":
                cols.append([r.ts_ms for r in chunk])
            elif kind == "recv":
                cols.append([r.received_ms for r in chunk])
            else:
                devices = [r.device for r in chunk]
                try:
                    cols.append(list(map(self._slots.__getitem__, devices)))
                except KeyError:
                    self._intern(devices)
                    cols.append(list(map(self._slots.__getitem__, devices)))
        return cols

    def _run(self, chunk: Sequence[Reading]) -> list[Decision]:
        n = len(chunk)
        if n == 0:
            return []
        if self._columns:
            packer = self._packers.get(n)
            if packer is None:
                packer = struct.Struct("<" + self._rowfmt * n)
                if len(self._packers) < 64:
                    self._packers[n] = packer
            cols = self._encode(chunk, n)
            try:
                packer.pack_into(self._mem, self._in_off, *_interleave(cols, n))
            except struct.error:
                flat = _interleave(self._sanitize(cols), n)
                packer.pack_into(self._mem, self._in_off, *flat)
        try:
            transforms = self._call(n, self.fuel_budget(n))
        except AgentFaultError:
            self._reset()
            raise
        if self._growable:
            self._remap()
        try:
            decisions = list(map(self._table.__getitem__, self._codes[:n].tolist()))
        except KeyError as exc:
            raise AgentFaultError(
                f"agent returned decision code {exc.args[0]}, which it never declared"
            ) from exc
        if transforms:
            self._apply_transforms(chunk, decisions, transforms)
        elif transforms < 0:
            raise AgentFaultError(f"agent refused a batch of {n} rows (returned {transforms})")
        return decisions

    @staticmethod
    def _sanitize_column(code: str, col: Sequence[Any]) -> list[Any]:
        """Make every value of a column packable (the rare path: odd values)."""
        return [as_number(v) for v in col] if code == "d" else [clamp_i64(v) for v in col]

    def _sanitize(self, cols: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """Columns with every value made packable; :func:`_interleave` takes them as they are."""
        return [
            self._sanitize_column(code, col) for code, col in zip(self._rowfmt, cols, strict=True)
        ]

    def _apply_transforms(
        self, chunk: Sequence[Reading], decisions: list[Decision], count: int
    ) -> None:
        """Read the agent's compact transform list: ``count`` entries of (row, target values)."""
        m = self.manifest
        entry = self._tx_entry
        if count > len(chunk):
            raise AgentFaultError(f"agent reported {count} transforms for {len(chunk)} rows")
        assigned = self._assigned
        for j in range(count):
            i, *out = entry.unpack_from(self._mem, m.transform_offset + j * entry.size)
            shared = decisions[i] if 0 <= i < len(chunk) else None
            if shared is None or shared.action != "transform":
                raise AgentFaultError(f"agent listed row {i} as a transform but did not code it so")
            values = dict(chunk[i].values)
            for t, name in assigned[shared.rule_id]:
                values[name] = out[t]
            decisions[i] = Decision("transform", shared.reason, shared.rule_id, shared.rule, values)

    def _reset(self) -> None:
        """Throw the faulted instance away and start a fresh one from the same module."""
        self._mem.release()
        self._codes.release()
        self._instantiate()

    def raw_call(self, n: int = 0) -> int:
        """One bare call of ``evaluate(n)`` (no encoding, no fuel reset): for benchmarks."""
        return self._call.raw(n)


def _interleave(cols: list[list[Any]], n: int) -> list[Any]:
    """Columns → one row-major list, by strided slice assignment (no per-row tuples)."""
    if len(cols) == 1:
        return cols[0]
    width = len(cols)
    flat: list[Any] = [None] * (n * width)
    for i, col in enumerate(cols):
        flat[i::width] = col
    return flat


def _zone_fn(zones: Mapping[str, str] | Callable[[str], str] | None) -> Callable[[str], str]:
    if zones is None:
        return lambda _device: ""
    if callable(zones):
        return zones
    table = dict(zones)
    return lambda device: table.get(device, "")
