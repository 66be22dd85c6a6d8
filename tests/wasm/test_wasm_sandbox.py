"""The host contains bad agents: runaways, memory bombs, malformed and lying modules."""

from __future__ import annotations

import pytest
import wasmtime

from amcp.wire.telemetry import Reading
from wasm.compiler import compile_policy
from wasm.errors import (
    AbiError,
    AgentFaultError,
    AgentLoadError,
    AgentRunawayError,
    MalformedModuleError,
    ResourceLimitError,
)
from wasm.host import PolicyAgent
from wasm.sandbox import AgentLimits

SOURCE = 'rule hot when t > 8 then flag because "hot"'


def _readings(n: int, t: float = 9.0) -> list[Reading]:
    return [Reading(device="d", boot="b", seq=i, ts_ms=i, values={"t": t}) for i in range(n)]


def _patched(old: str, new: str, source: str = SOURCE) -> bytes:
    wat = compile_policy(source).wat
    assert old in wat
    return bytes(wasmtime.wat2wasm(wat.replace(old, new, 1)))


HEAD = '(module (memory (export "memory") 1 1) '
SPIN_ON_SEVEN = (
    "(block $done",
    "(if (i32.eq (local.get $n) (i32.const 7)) (then (loop $spin (br $spin))))(block $done",
)


def test_runaway_agent_is_stopped_within_its_fuel_bound_and_keeps_serving() -> None:
    limits = AgentLimits(fuel_per_call=50_000, fuel_per_row=1_000)
    agent = PolicyAgent.load(_patched(*SPIN_ON_SEVEN), limits=limits)
    assert [d.action for d in agent.evaluate_batch(_readings(3))] == ["flag"] * 3
    with pytest.raises(AgentRunawayError) as info:
        agent.evaluate_batch(_readings(7))
    assert info.value.fuel == agent.fuel_budget(7)
    assert agent.fuel_budget(7) < 50_000 + 7 * 1_000  # the manifest's estimate is tighter
    assert isinstance(info.value, AgentFaultError)
    # the same agent object serves the next batch, from a fresh instance
    assert [d.action for d in agent.evaluate_batch(_readings(2, t=1.0))] == ["allow"] * 2
    assert agent.evaluate(_readings(1)[0]).action == "flag"


def test_runaway_start_function_is_refused_at_load() -> None:
    binary = _patched("(func (export", "(start $spin) (func $spin (loop $l (br $l))) (func (export")
    with pytest.raises(AgentFaultError):
        PolicyAgent.load(binary)


def test_memory_bomb_is_capped_by_the_store_limit() -> None:
    grow_forever = (
        "(block $done",
        (
            "(block $full (loop $g (br_if $full"
            " (i32.eq (memory.grow (i32.const 16)) (i32.const -1))) (br $g)))(block $done"
        ),
    )
    wat = compile_policy(SOURCE).wat.replace(*grow_forever, 1)
    pages = wat.split('(memory (export "memory") ')[1].split(")")[0].split()[0]
    wat = wat.replace(
        f'(memory (export "memory") {pages} {pages})', f'(memory (export "memory") {pages})'
    )
    limit = 4 << 20
    agent = PolicyAgent.load(bytes(wasmtime.wat2wasm(wat)), limits=AgentLimits(memory_bytes=limit))
    assert [d.action for d in agent.evaluate_batch(_readings(3))] == ["flag"] * 3
    grown = agent._memory.data_len(agent._store)
    assert int(pages) * 65536 < grown <= limit  # it did grow, and stopped at the limit
    assert agent.evaluate(_readings(1, t=0)[0]).action == "allow"


def test_memory_bomb_that_traps_after_the_limit_is_a_fault_and_recovers() -> None:
    bomb = (
        "(block $done",
        (
            "(if (i32.eq (local.get $n) (i32.const 5)) (then (loop $g (br_if $g"
            " (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))(block $done"
        ),
    )
    wat = compile_policy(SOURCE).wat.replace(*bomb, 1)
    pages = wat.split('(memory (export "memory") ')[1].split(")")[0].split()[0]
    wat = wat.replace(
        f'(memory (export "memory") {pages} {pages})', f'(memory (export "memory") {pages})'
    )
    agent = PolicyAgent.load(
        bytes(wasmtime.wat2wasm(wat)), limits=AgentLimits(memory_bytes=2 << 20)
    )
    with pytest.raises(AgentFaultError) as info:
        agent.evaluate_batch(_readings(5))
    assert info.value.trap_code == "UNREACHABLE"
    assert len(agent.evaluate_batch(_readings(4))) == 4


def test_module_asking_for_too_much_memory_is_refused() -> None:
    binary = _patched('(memory (export "memory") 1 1)', '(memory (export "memory") 20000 20000)',
                      "rule a when true then allow")  # fmt: skip
    with pytest.raises(ResourceLimitError):
        PolicyAgent.load(binary, limits=AgentLimits(memory_bytes=16 << 20))


@pytest.mark.parametrize(
    ("binary", "error"),
    [
        (b"not wasm at all", MalformedModuleError),
        (b"\x00asm\x01\x00\x00\x00\xff", MalformedModuleError),
        (bytes(wasmtime.wat2wasm("(module)")), AbiError),
        (
            bytes(
                wasmtime.wat2wasm('(module (import "env" "f" (func)) (memory (export "memory") 1))')
            ),
            AbiError,
        ),
        (
            bytes(
                wasmtime.wat2wasm(
                    HEAD + '(global (export "cyb_manifest_ptr") i32 (i32.const 0))'
                    ' (global (export "cyb_manifest_len") i32 (i32.const 4))'
                    ' (data (i32.const 0) "nope")'
                    ' (func (export "evaluate") (param i32) (result i32) (i32.const 0)))'
                )
            ),
            AbiError,
        ),
        (
            bytes(
                wasmtime.wat2wasm(
                    HEAD + '(global (export "cyb_manifest_ptr") i32 (i32.const 0))'
                    ' (global (export "cyb_manifest_len") i32 (i32.const 4))'
                    ' (data (i32.const 0) "nope")'
                    ' (func (export "evaluate") (param i64) (result i32) (i32.const 0)))'
                )
            ),
            AbiError,
        ),
        (
            bytes(
                wasmtime.wat2wasm(
                    HEAD + '(global (export "cyb_manifest_ptr") i32 (i32.const 65530))'
                    ' (global (export "cyb_manifest_len") i32 (i32.const 100))'
                    ' (func (export "evaluate") (param i32) (result i32) (i32.const 0)))'
                )
            ),
            AbiError,
        ),
    ],
)
def test_malformed_modules_are_refused_with_typed_errors(
    binary: bytes, error: type[AgentLoadError]
) -> None:
    with pytest.raises(error):
        PolicyAgent.load(binary)


def test_manifest_regions_outside_memory_are_refused() -> None:
    compiled = compile_policy(SOURCE)
    # a same-length edit keeps the data segment valid: 9999 rows no longer fit in memory
    old, new = "\\22batch_capacity\\22:1024", "\\22batch_capacity\\22:9999"
    wat = compiled.wat.replace(old, new, 1)
    assert wat != compiled.wat
    with pytest.raises(AbiError, match="input region"):
        PolicyAgent.load(bytes(wasmtime.wat2wasm(wat)))


def test_undeclared_decision_code_is_a_fault() -> None:
    binary = _patched(
        "(i32.store16 offset=", "(local.set $code (i32.const 999))(i32.store16 offset="
    )
    agent = PolicyAgent.load(binary)
    with pytest.raises(AgentFaultError, match="999"):
        agent.evaluate_batch(_readings(2))
    with pytest.raises(AgentFaultError, match="999"):
        agent.evaluate(_readings(1)[0])


def test_runaway_single_call_stops_within_the_pooled_bound() -> None:
    limits = AgentLimits(fuel_per_call=10_000, fuel_per_row=1_000, pool_calls=4)
    spin_on_hot = (
        "(block $decided",
        "(if (f64.gt (local.get $f0) (f64.const 100)) (then (loop $s (br $s))))(block $decided",
    )
    agent = PolicyAgent.load(_patched(*spin_on_hot), limits=limits)
    for _ in range(10):  # many calls share one pool; a legitimate agent never runs dry
        assert agent.evaluate(_readings(1)[0]).action == "flag"
    with pytest.raises(AgentRunawayError) as info:
        agent.evaluate(_readings(1, t=500.0)[0])
    assert info.value.fuel == 4 * agent.fuel_budget(1)
    assert agent.evaluate(_readings(1, t=1.0)[0]).action == "allow"
