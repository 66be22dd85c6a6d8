"""WASM policy agents: decision latency and throughput against the bare and generic calls.

References measured in the same run: a bare call of an empty ``(i32) -> i32`` export through
the same unchecked fast path (``raw_call_p99_us``), and the same decision made through
wasmtime's public ``Func.__call__`` (``generic_call_p99_us``). Seed item 3.2 (nonce validation
in wasm) is measured here too: a Python set lookup against a wasm hash-set probe, single and
batched, so the docs can say which is faster on this machine.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path

import wasmtime

from amcp.wire.telemetry import Reading
from cybernetic.bench import progress
from wasm._fastcall import FastCall
from wasm.compiler import compile_policy
from wasm.errors import AgentRunawayError
from wasm.host import PolicyAgent
from wasm.sandbox import AgentLimits, engine, load_module

DESCRIPTION = "policy agents: decisions/s, single-decision latency vs bare and generic wasm calls"

POLICY = Path(__file__).parents[2] / "examples" / "policies" / "cold-chain.policy"
FALLBACK_POLICY = """policy "bench" version 1
rule flood when rate(1s) > 20 then deny because "flood"
rule impossible when temp_c < -90 or temp_c > 150 or humidity < 0 or humidity > 100 then deny
rule warm when zone == "cold-store" and temp_c > 8 then flag because "warm"
rule night when door == 1 and (hour >= 22 or hour < 6) then flag
rule clamp when humidity > 95 then transform humidity = min(humidity, 95)
"""
EMPTY_WAT = '(module (func (export "noop") (param i32) (result i32) (local.get 0)))'
NONCE_WAT = """(module (memory (export "memory") 48 48)
  ;; open-addressing set of u64 nonces at 0 (1<<20 slots of 8 bytes would not fit: 1<<18 here);
  ;; input batch at 2 MiB, results (u8 seen-before) at 2.5 MiB
  (func $check (param $key i64) (result i32) (local $i i32) (local $k i64)
    (local.set $i (i32.and (i32.wrap_i64
      (i64.mul (local.get $key) (i64.const 0x9E3779B97F4A7C15))) (i32.const 262143)))
    (loop $probe
      (local.set $k (i64.load (i32.shl (local.get $i) (i32.const 3))))
      (if (i64.eq (local.get $k) (local.get $key)) (then (return (i32.const 1))))
      (if (i64.eqz (local.get $k)) (then
        (i64.store (i32.shl (local.get $i) (i32.const 3)) (local.get $key))
        (return (i32.const 0))))
      (local.set $i (i32.and (i32.add (local.get $i) (i32.const 1)) (i32.const 262143)))
      (br $probe))
    (i32.const 0))
  (func (export "check_batch") (param $n i32) (result i32) (local $j i32) (local $seen i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $j) (local.get $n)))
      (i32.store8 offset=2621440 (local.get $j)
        (call $check (i64.load offset=2097152 (i32.shl (local.get $j) (i32.const 3)))))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br $next)))
    (local.get $n)))"""


def _wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=1024, help="readings per batch")
    parser.add_argument("--batches", type=int, default=100, help="batches per throughput run")
    parser.add_argument("--samples", type=int, default=20_000, help="single decisions per run")
    parser.add_argument("--runs", type=int, default=5, help="runs; medians are reported")


def _readings(count: int, seed: int = 1) -> list[Reading]:
    rng = random.Random(seed)
    now = 1_764_000_000_000
    devices = [f"sensor-{i}" for i in range(48)] + [f"legacy-{i}" for i in range(2)]
    return [
        Reading(
            device=rng.choice(devices), boot="b", seq=i, ts_ms=now + i * 7,
            values={
                "temp_c": rng.uniform(-5, 12),
                "humidity": rng.uniform(20, 96),
                "door": rng.random() < 0.05,
            },
            received_ms=now + i * 7 + rng.randint(0, 400_000),
        )
        for i in range(count)
    ]  # fmt: skip


def _percentiles(measure: Callable[[], object], samples: int) -> tuple[float, float]:
    """p50 and p99 in microseconds, with the cyclic GC off (as ``timeit`` does) for all
    measurements alike, so a collection landing in one sample does not set the p99."""
    clock = time.perf_counter_ns
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(samples):
            start = clock()
            measure()
            times.append(clock() - start)
    finally:
        gc.enable()
    times.sort()
    return times[len(times) // 2] / 1000, times[int(len(times) * 0.99)] / 1000


def _median_pair(runs: int, fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    pairs = [fn() for _ in range(runs)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def _generic_agent(agent: PolicyAgent, zones: dict[str, str]) -> PolicyAgent:
    """A second agent of the same module whose single path calls ``Func.__call__``: the same
    decision, encoding and fuel pooling; only the call mechanism differs."""
    twin = PolicyAgent(agent.module, zones=zones, limits=agent.limits)
    twin._call = _Generic(twin._store, twin.evaluate_func)  # type: ignore[assignment]  # noqa: SLF001
    twin._bind_single()  # noqa: SLF001
    return twin


class _Generic:
    """Stands in for ``wasm._fastcall.FastCall`` with wasmtime's public call."""

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func) -> None:
        self.store, self.func = store, func

    def __call__(self, arg: int, fuel: int) -> int:
        self.store.set_fuel(fuel)
        result: int = self.func(self.store, arg)
        return result

    def single(self, fuel: int, every: int) -> Callable[[int], int]:
        left = [0]
        store, func = self.store, self.func

        def run(arg: int) -> int:
            left[0] -= 1
            if left[0] <= 0:
                store.set_fuel(fuel * every)
                left[0] = every
            result: int = func(store, arg)
            return result

        return run


def _nonce_figures(samples: int, batch: int) -> dict[str, float]:
    rng = random.Random(3)
    nonces = [rng.getrandbits(63) | 1 for _ in range(samples)]
    seen: set[int] = set()

    clock = time.perf_counter_ns
    start = clock()
    replays = 0
    for n in nonces:  # the replay guard's exact-store check: lookup, then insert
        if n in seen:
            replays += 1
        else:
            seen.add(n)
    python_ns = (clock() - start) / samples

    store = wasmtime.Store(engine())
    inst = wasmtime.Instance(store, wasmtime.Module(engine(), _wasm(NONCE_WAT)), [])
    func = inst.exports(store)["check_batch"]
    memory = inst.exports(store)["memory"]
    assert isinstance(func, wasmtime.Func)
    assert isinstance(memory, wasmtime.Memory)
    call = FastCall(store, func)
    import ctypes  # noqa: PLC0415

    base = ctypes.addressof(memory.data_ptr(store).contents)
    mem = memoryview((ctypes.c_ubyte * memory.data_len(store)).from_address(base)).cast("B")
    one = struct.Struct("<q")
    start = clock()
    for n in nonces[: samples // 2]:
        one.pack_into(mem, 2_097_152, n)
        call(1, 10_000)
        _ = mem[2_621_440]
    single_us = (clock() - start) / (samples // 2) / 1000
    rest = nonces[samples // 2 :]
    packer = struct.Struct(f"<{batch}q")
    start = clock()
    done = 0
    for i in range(0, len(rest) - batch + 1, batch):
        packer.pack_into(mem, 2_097_152, *rest[i : i + batch])
        call(batch, 10_000_000)
        _ = bytes(mem[2_621_440 : 2_621_440 + batch])
        done += batch
    batch_ns = (clock() - start) / max(done, 1)
    mem.release()
    return {"nonce_python_ns": round(python_ns, 1), "nonce_wasm_single_us": round(single_us, 3),
            "nonce_wasm_batched_ns": round(batch_ns, 1)}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, object]:
    source = POLICY.read_text() if POLICY.exists() else FALLBACK_POLICY
    zones = {f"sensor-{i}": "cold-store" if i % 2 else "dock" for i in range(40)}

    def compile_once() -> float:
        start = time.perf_counter()
        load_module(compile_policy(source, batch_capacity=max(args.batch, 1)).wasm)
        return (time.perf_counter() - start) * 1000

    compile_ms = statistics.median(compile_once() for _ in range(max(args.runs, 1)))
    progress(f"compile: {compile_ms:.2f} ms")
    agent = PolicyAgent.load(compile_policy(source, batch_capacity=max(args.batch, 1)), zones=zones)
    readings = _readings(args.batch * 4)
    batches = [readings[i : i + args.batch] for i in range(0, len(readings), args.batch)]

    def throughput() -> float:
        start = time.perf_counter()
        for i in range(args.batches):
            agent.evaluate_batch(batches[i % len(batches)])
        return float(args.batches * args.batch / (time.perf_counter() - start))

    per_s = statistics.median(throughput() for _ in range(args.runs))
    progress(f"batched: {per_s:,.0f} decisions/s")
    it = itertools.cycle(readings)
    single = _median_pair(
        args.runs, lambda: _percentiles(lambda: agent.evaluate(next(it)), args.samples)
    )
    progress(f"single decision p50/p99: {single[0]:.2f}/{single[1]:.2f} us")

    store = wasmtime.Store(engine())
    noop = wasmtime.Instance(store, wasmtime.Module(engine(), _wasm(EMPTY_WAT)), []).exports(store)[
        "noop"
    ]
    assert isinstance(noop, wasmtime.Func)
    store.set_fuel(2**62)  # the engine meters fuel; the bare call never resets it
    bare = FastCall(store, noop)
    raw = _median_pair(args.runs, lambda: _percentiles(lambda: bare.raw(1), args.samples))
    progress(f"bare fast call p50/p99: {raw[0]:.2f}/{raw[1]:.2f} us")
    twin = _generic_agent(agent, zones)
    it2 = itertools.cycle(readings)
    generic = _median_pair(
        args.runs,
        lambda: _percentiles(lambda: twin.evaluate(next(it2)), max(args.samples // 4, 10)),
    )
    progress(f"generic Func.__call__ decision p50/p99: {generic[0]:.2f}/{generic[1]:.2f} us")

    spin = compile_policy(source, batch_capacity=max(args.batch, 1)).wat.replace(
        "(block $done", "(loop $spin (br $spin))(block $done", 1
    )
    runaway = PolicyAgent.load(bytes(wasmtime.wat2wasm(spin)), zones=zones, limits=AgentLimits())
    stops = []
    for _ in range(3):
        start = time.perf_counter()
        try:
            runaway.evaluate_batch(batches[0])
        except AgentRunawayError:
            stops.append((time.perf_counter() - start) * 1000)
    progress(f"runaway batch of {args.batch} stopped after {statistics.median(stops):.1f} ms")
    nonce = _nonce_figures(max(args.samples, 2 * args.batch), args.batch)
    progress(f"nonce check: {nonce}")
    return {
        "decisions_per_s": round(per_s),
        "decision_p50_us": round(single[0], 3),
        "decision_p99_us": round(single[1], 3),
        "raw_call_p50_us": round(raw[0], 3),
        "raw_call_p99_us": round(raw[1], 3),
        "generic_call_p50_us": round(generic[0], 3),
        "generic_call_p99_us": round(generic[1], 3),
        "overhead_ratio": round(single[1] / raw[1], 3),
        "overhead_ratio_p50": round(single[0] / raw[0], 3),
        "generic_over_decision_p99": round(generic[1] / single[1], 2),
        "compile_ms": round(compile_ms, 2),
        "batch": args.batch,
        "runaway_stop_ms": round(statistics.median(stops), 2),
        "runaway_fuel": runaway.fuel_budget(args.batch),
        **nonce,
    }
