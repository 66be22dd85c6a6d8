"""The sandbox every agent runs in: one fuel-metering engine, the limits, and module checks.

Split from :mod:`wasm.host` so what an agent may do (``AgentLimits``) and what a module must
look like to be loaded at all (``load_module``) read on one page.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import wasmtime

from wasm import abi
from wasm.errors import AbiError, MalformedModuleError

_ENGINE: wasmtime.Engine | None = None
_ENGINE_LOCK = threading.Lock()


@dataclass(frozen=True)
class AgentLimits:
    """What one agent may use. A runaway call stops after at most
    ``fuel_per_call + fuel_per_row * rows`` fuel units (about one per wasm instruction)."""

    memory_bytes: int = 16 << 20
    fuel_per_call: int = 10_000
    fuel_per_row: int = 50_000
    """Ceiling per row; an agent whose manifest declares ``fuel_per_row`` gets twice that."""
    pool_calls: int = 128
    """Single-reading calls refill fuel once per this many calls (a refill costs about half a
    call, and refilling less than once per 100 calls keeps it out of the p99): a runaway
    single call stops within ``pool_calls`` single-call budgets."""
    table_elements: int = 10_000


def engine() -> wasmtime.Engine:
    """The process-wide engine: fuel metering on, a small wasm stack (agents need little)."""
    global _ENGINE  # noqa: PLW0603 - one engine per process, made on first use
    with _ENGINE_LOCK:
        if _ENGINE is None:
            config = wasmtime.Config()
            config.consume_fuel = True
            config.max_wasm_stack = 512 << 10
            _ENGINE = wasmtime.Engine(config)
        return _ENGINE


def load_module(binary: bytes) -> wasmtime.Module:
    """Compile wasm bytes, refusing anything that is not a module with no imports."""
    try:
        module = wasmtime.Module(engine(), binary)
    except wasmtime.WasmtimeError as exc:
        raise MalformedModuleError(f"not a valid wasm module: {exc}") from exc
    if module.imports:
        names = [f"{i.module}.{i.name}" for i in module.imports]
        raise AbiError(f"a policy agent imports nothing; this one imports {names}")
    exports = {e.name: e.type for e in module.exports}
    want = {
        abi.MEMORY: wasmtime.MemoryType,
        abi.EVALUATE: wasmtime.FuncType,
        abi.MANIFEST_PTR: wasmtime.GlobalType,
        abi.MANIFEST_LEN: wasmtime.GlobalType,
    }
    for name, kind in want.items():
        if not isinstance(exports.get(name), kind):
            raise AbiError(f"a policy agent exports {kind.__name__} {name!r}; this one does not")
    i32 = wasmtime.ValType.i32()
    func_type = exports[abi.EVALUATE]
    assert isinstance(func_type, wasmtime.FuncType)
    if func_type.params != [i32] or func_type.results != [i32]:
        raise AbiError(
            f"{abi.EVALUATE} must be (i32) -> i32, not {func_type.params} -> {func_type.results}"
        )
    return module
