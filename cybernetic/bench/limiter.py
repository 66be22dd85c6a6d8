"""S2 limiter: GCRA decisions against a plain dict increment, and phi-accrual evaluations."""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from cybernetic.bench import median_of, progress
from gateway.s2.admission import RateGate
from gateway.s2.config import LimitsConfig, PhiConfig, RateLimit
from gateway.s2.limiter import KeyedLimiter
from gateway.s2.phi import PhiAccrual

DESCRIPTION = "GCRA decisions/s over 10,000 keys vs a dict increment; phi-accrual evals/s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=int, default=10_000, help="distinct keys (devices)")
    parser.add_argument("--decisions", type=int, default=1_000_000, help="decisions per run")
    parser.add_argument("--batch", type=int, default=1_000, help="readings per batch call")
    parser.add_argument("--runs", type=int, default=5, help="runs; medians are reported")


class SimClock:
    """Simulated time: each batch is one millisecond, so keys see a realistic offered rate."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _batches(keys: int, decisions: int, batch: int) -> list[list[str]]:
    rng = random.Random(12)
    names = [f"device-{i:05d}" for i in range(keys)]
    stream = [names[rng.randrange(keys)] for _ in range(decisions)]
    return [stream[i : i + batch] for i in range(0, decisions, batch)]


def _dict_baseline(batches: list[list[str]]) -> float:
    """The reference: one per-key dict increment per decision, same keys, same batching."""
    counts: dict[str, int] = {}

    def count(keys: list[str]) -> None:
        get = counts.get
        for key in keys:
            counts[key] = get(key, 0) + 1

    total = sum(len(b) for b in batches)
    start = time.perf_counter()
    for keys in batches:
        count(keys)
    return total / (time.perf_counter() - start)


def _limiter(batches: list[list[str]], denied: list[float]) -> float:
    clock = SimClock()
    # 1,000 decisions per simulated ms over 10,000 keys is 100/s per key: right at the limit,
    # so both the allow and the deny branch are exercised.
    limiter = KeyedLimiter(RateLimit(rate=100, burst=20), clock)
    total = sum(len(b) for b in batches)
    allow_batch = limiter.allow_batch
    start = time.perf_counter()
    for keys in batches:
        clock.now += 0.001
        allow_batch(keys)
    elapsed = time.perf_counter() - start
    denied.append(limiter.denied / total)
    return total / elapsed


def _gate(batches: list[list[str]]) -> float:
    clock = SimClock()
    config = LimitsConfig(
        device=RateLimit(rate=100, burst=20), total=RateLimit(rate=2_000_000, burst=100_000)
    )
    gate = RateGate(config, clock)
    total = sum(len(b) for b in batches)
    start = time.perf_counter()
    for keys in batches:
        clock.now += 0.001
        gate.admit_devices(keys)
    return total / (time.perf_counter() - start)


def _phi_setup(units: int) -> tuple[SimClock, PhiAccrual]:
    clock = SimClock()
    phi = PhiAccrual(PhiConfig(), clock)
    rng = random.Random(3)
    names = [f"unit-{i:05d}" for i in range(units)]
    for _ in range(12):
        clock.now += 1.0
        for name in names:
            phi.heartbeat(name)
        clock.now += rng.uniform(0, 0.01)
    clock.now += 2.0
    return clock, phi


def _phi_evals(phi: PhiAccrual, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        phi.phi_many()
    return rounds * len(phi) / (time.perf_counter() - start)


def _phi_single(phi: PhiAccrual, names: list[str]) -> float:
    one = phi.phi
    start = time.perf_counter()
    for name in names:
        one(name)
    return len(names) / (time.perf_counter() - start)


def _timed(label: str, runs: int, measure: Callable[[], float]) -> float:
    value = median_of(runs, measure)
    progress(f"{label}: {value:,.0f}/s (median of {runs})")
    return value


def run(args: argparse.Namespace) -> dict[str, object]:
    progress(f"generating {args.decisions:,} decisions over {args.keys:,} keys")
    batches = _batches(args.keys, args.decisions, args.batch)
    denied: list[float] = []
    baseline = _timed("dict baseline", args.runs, lambda: _dict_baseline(batches))
    decisions = _timed("limiter", args.runs, lambda: _limiter(batches, denied))
    gate = _timed("rate gate", args.runs, lambda: _gate(batches))
    clock, phi = _phi_setup(args.keys)
    rounds = max(1, args.decisions // args.keys // 4)
    phi_evals = _timed("phi evals", args.runs, lambda: _phi_evals(phi, rounds))
    names = list(phi.units())
    phi_single = _timed("phi single", args.runs, lambda: _phi_single(phi, names))
    del clock
    return {
        "keys": args.keys,
        "decisions": args.decisions,
        "batch": args.batch,
        "runs": args.runs,
        "decisions_per_s": round(decisions),
        "dict_baseline_per_s": round(baseline),
        "limiter_ratio": round(decisions / baseline, 3),
        "denied_fraction": round(sorted(denied)[len(denied) // 2], 4),
        "gate_decisions_per_s": round(gate),
        "phi_evals_per_s": round(phi_evals),
        "phi_single_evals_per_s": round(phi_single),
    }
