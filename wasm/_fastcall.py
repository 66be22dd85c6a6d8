"""The fast call into an agent: the only module that touches non-public wasmtime-py parts.

``Func.__call__`` re-reads the function type and boxes every value on every call (11-40 us
measured). Agents export one ``(i32) -> i32`` function whose type the host checks once at
load, so each call can go straight to ``wasmtime_func_call_unchecked`` with a preallocated
raw value cell (about 1.5 us). That needs four private pieces of wasmtime-py:
``wasmtime._ffi.dll``, ``Store._context()``, ``Func._func`` and ``Trap._from_ptr`` /
``WasmtimeError._from_ptr``. They are checked when this module is used; the tests in
tests/wasm/test_wasm_fastcall.py fail loudly if any of them changes. Supported: wasmtime-py
50.x (``SUPPORTED_MAJOR``). Every call checks both the returned error and the trap cell.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import wasmtime

from wasm.errors import AgentFaultError, AgentRunawayError, BindingsChangedError

SUPPORTED_MAJOR = 50
_c = ctypes.c_void_p


def check_bindings() -> Any:
    """Return wasmtime's ffi module after checking every private piece we use is there."""
    major = int(version("wasmtime").split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise BindingsChangedError(
            f"the fast call path supports wasmtime-py {SUPPORTED_MAJOR}.x, "
            f"found {version('wasmtime')}"
        )
    try:
        from wasmtime import _ffi as ffi  # noqa: PLC0415 - private, imported only after the check

        needed = (
            ffi.dll.wasmtime_func_call_unchecked,
            ffi.dll.wasmtime_context_set_fuel,
            ffi.wasmtime_val_raw_t,
            ffi.wasm_trap_t,
            ffi.wasmtime_error_t,
            wasmtime.Store._context,  # noqa: SLF001
            wasmtime.Trap._from_ptr,  # noqa: SLF001
            wasmtime.WasmtimeError._from_ptr,  # noqa: SLF001
        )
    except AttributeError as exc:
        raise BindingsChangedError(f"wasmtime-py internals changed: {exc}") from exc
    del needed
    if ctypes.sizeof(ffi.wasmtime_val_raw_t) != 16:
        raise BindingsChangedError("wasmtime_val_raw_t is no longer 16 bytes")
    return ffi


def _address(function: Any) -> int:
    address = ctypes.cast(function, _c).value
    if address is None:
        raise BindingsChangedError(f"{function!r} has no address")
    return address


class FastCall:
    """Calls one ``(i32) -> i32`` export of an instance with fuel reset before each call."""

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func) -> None:
        ffi = check_bindings()
        ty = func.type(store)
        i32 = wasmtime.ValType.i32()
        if ty.params != [i32] or ty.results != [i32]:
            raise TypeError(f"fast call needs (i32) -> i32, got {ty.params} -> {ty.results}")
        raw_func = getattr(func, "_func", None)
        if not isinstance(raw_func, ffi.wasmtime_func_t):
            raise BindingsChangedError("Func._func is no longer a wasmtime_func_t")
        self._ffi = ffi
        self._store = store  # keeps the context alive as long as this object
        self._func_struct = raw_func
        self._ctx = ctypes.cast(store._context(), _c).value  # noqa: SLF001
        self._func = ctypes.addressof(raw_func)
        self._cell = (ffi.wasmtime_val_raw_t * 1)()
        self._arg = self._cell[0]
        self._trap = _c()
        self._trap_addr = ctypes.addressof(self._trap)
        # PYFUNCTYPE keeps the GIL: calls are microseconds, and releasing it costs more.
        call_t = ctypes.PYFUNCTYPE(_c, _c, _c, _c, ctypes.c_size_t, _c)
        fuel_t = ctypes.PYFUNCTYPE(_c, _c, ctypes.c_uint64)
        self._call = call_t(_address(ffi.dll.wasmtime_func_call_unchecked))
        self._set_fuel = fuel_t(_address(ffi.dll.wasmtime_context_set_fuel))
        self._cell_addr = ctypes.addressof(self._cell)
        self._left = [0]  # calls left in the single-call fuel pool (shared with closures)

    def __call__(self, arg: int, fuel: int) -> int:
        """Call with ``arg``, after setting the store's fuel to ``fuel``; trap → AgentFaultError."""
        ctx = self._ctx
        self._left[0] = 0  # the next pooled call refills: this call may have drained the pool
        if self._set_fuel(ctx, fuel):
            raise AgentFaultError("could not set fuel: the engine does not consume fuel")
        self._arg.i32 = arg
        err = self._call(ctx, self._func, self._cell_addr, 1, self._trap_addr)
        if err or self._trap.value:
            self._raise(err, fuel)
        result: int = self._arg.i32
        return result

    def single(self, fuel: int, every: int) -> Callable[[int], int]:
        """A caller for one-row calls that refills ``fuel * every`` once per ``every`` calls.

        Setting fuel costs about half a bare call, so single-reading calls share a pool: a
        runaway still stops, after at most ``fuel * every`` units. Everything the call needs
        is bound into the closure: this is the hot path of single decisions.
        """
        ctx, func, cell, trap_addr = self._ctx, self._func, self._cell_addr, self._trap_addr
        trap, arg, call, set_fuel = self._trap, self._arg, self._call, self._set_fuel
        budget = fuel * every
        left = self._left

        def run(value: int) -> int:
            left[0] -= 1
            if left[0] <= 0:
                if set_fuel(ctx, budget):
                    raise AgentFaultError("could not set fuel: the engine does not consume fuel")
                left[0] = every
            arg.i32 = value
            err = call(ctx, func, cell, 1, trap_addr)
            if err or trap.value:
                left[0] = 0
                self._raise(err, budget)
            result: int = arg.i32
            return result

        return run

    def raw(self, arg: int) -> int:
        """The bare call with no fuel reset: the reference the benchmark compares against."""
        self._arg.i32 = arg
        err = self._call(self._ctx, self._func, self._cell_addr, 1, self._trap_addr)
        if err or self._trap.value:
            self._raise(err, 0)
        result: int = self._arg.i32
        return result

    def _raise(self, err: int | None, fuel: int) -> None:
        ffi = self._ffi
        if err:
            error = wasmtime.WasmtimeError._from_ptr(  # noqa: SLF001
                ctypes.cast(err, ctypes.POINTER(ffi.wasmtime_error_t))
            )
            raise AgentFaultError(f"agent call failed: {error}")
        trap = wasmtime.Trap._from_ptr(  # noqa: SLF001
            ctypes.cast(_c(self._trap.value), ctypes.POINTER(ffi.wasm_trap_t))
        )
        self._trap.value = None
        code = trap.trap_code
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            raise AgentRunawayError(f"agent ran out of its fuel budget ({fuel} units)", fuel)
        raise AgentFaultError(f"agent trapped: {trap.message}", code.name if code else None)
