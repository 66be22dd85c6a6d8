"""The fast call path leans on private wasmtime-py parts: these tests fail loudly if they move."""

from __future__ import annotations

from importlib.metadata import version

import pytest
import wasmtime
from hypothesis import given
from hypothesis import strategies as st

from wasm._fastcall import SUPPORTED_MAJOR, FastCall, check_bindings
from wasm.errors import AgentFaultError, AgentRunawayError
from wasm.sandbox import engine

Inst = tuple[wasmtime.Store, wasmtime.Instance]
WAT = """(module
  (func (export "mix") (param $x i32) (result i32)
    (i32.xor (i32.mul (local.get $x) (i32.const 2654435761)) (i32.const 12345)))
  (func (export "boom") (param $x i32) (result i32)
    (if (i32.eqz (local.get $x)) (then unreachable)) (i32.div_s (i32.const 7) (local.get $x)))
  (func (export "spin") (param i32) (result i32) (loop $l (br $l)) (i32.const 0)))"""


@pytest.fixture(scope="module")
def instance() -> Inst:
    store = wasmtime.Store(engine())
    store.set_fuel(10**9)
    return store, wasmtime.Instance(
        store, wasmtime.Module(engine(), bytes(wasmtime.wat2wasm(WAT))), []
    )


def _fast(instance: Inst, name: str) -> FastCall:
    store, inst = instance
    func = inst.exports(store)[name]
    assert isinstance(func, wasmtime.Func)
    return FastCall(store, func)


def test_installed_wasmtime_is_the_pinned_major_version() -> None:
    assert int(version("wasmtime").split(".")[0]) == SUPPORTED_MAJOR, (
        "wasmtime-py changed major version: re-check wasm/_fastcall.py against its _func.py "
        "and _bindings.py, then bump SUPPORTED_MAJOR"
    )
    check_bindings()


@given(st.integers(-(2**31), 2**31 - 1))
def test_fast_call_returns_what_func_call_returns(instance: Inst, x: int) -> None:
    store, inst = instance
    generic = inst.exports(store)["mix"]
    assert isinstance(generic, wasmtime.Func)
    assert _fast(instance, "mix")(x, 10_000) == generic(store, x)


def test_every_trap_is_reported_and_the_trap_cell_is_cleared(instance: Inst) -> None:
    boom = _fast(instance, "boom")
    with pytest.raises(AgentFaultError) as info:
        boom(0, 10_000)
    assert info.value.trap_code == "UNREACHABLE"
    assert boom(7, 10_000) == 1  # a stale trap cell would raise again here
    with pytest.raises(AgentFaultError) as info:
        boom(0, 10_000)
    assert info.value.trap_code == "UNREACHABLE"


def test_out_of_fuel_is_a_runaway(instance: Inst) -> None:
    with pytest.raises(AgentRunawayError) as info:
        _fast(instance, "spin")(0, 5_000)
    assert info.value.fuel == 5_000
    assert _fast(instance, "mix")(1, 100) == _fast(instance, "mix")(1, 100)


def test_signature_is_checked_once_at_construction() -> None:
    store = wasmtime.Store(engine())
    module = wasmtime.Module(
        engine(), bytes(wasmtime.wat2wasm('(module (func (export "f") (param i64)))'))
    )
    func = wasmtime.Instance(store, module, []).exports(store)["f"]
    assert isinstance(func, wasmtime.Func)
    with pytest.raises(TypeError):
        FastCall(store, func)
