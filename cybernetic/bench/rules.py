"""GoldRush rules: one compiled pattern vs hand-written Python, indexed set vs naive loop.

Fields (issues #8 and #9): ``single_rule_events_per_s`` (``temp > 90 and cpu > 80``,
compiled), ``handwritten_events_per_s`` (the same test written by hand, same events, same
run), ``single_ratio``; ``rules`` realistic patterns (mostly per-device equality plus
thresholds) matched by the indexed set (``events_per_s``) and by one compiled function per
pattern (``naive_events_per_s``), ``speedup``, ``matches_per_event``; ``swap_ms`` (build a
set of 1000 different patterns from their stored JSON form while another thread keeps
matching, then swap); ``build_ms`` (the first set, from text, on an idle thread); and
``windowed_events_per_s`` (100 windowed count patterns, "N times within W s per device").
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from amcp.goldrush import PatternSet, compile_query, decode, encode, parse, reduce
from amcp.goldrush.query import Cond
from amcp.goldrush.situations import RuleEngine
from amcp.goldrush.windows import WindowSpec
from cybernetic.bench import median_of, progress

DESCRIPTION = "GoldRush rule engine: compiled vs hand-written, indexed vs naive, swap, windows"

Event = Mapping[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", type=int, default=1000, help="patterns in the set")
    parser.add_argument("--events", type=int, default=50_000, help="events per measured run")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--seed", type=int, default=7)


def make_events(n: int, devices: int, rng: random.Random) -> list[dict[str, Any]]:
    statuses = ["ok"] * 18 + ["fault", "alarm"]
    return [
        {
            "device": f"dev-{rng.randrange(devices):03d}",
            "seq": i,
            "ts_ms": 1_700_000_000_000 + i * 10,
            "temp": round(rng.gauss(60, 15), 2),
            "cpu": rng.randrange(101),
            "mem": round(rng.uniform(0, 100), 1),
            "status": rng.choice(statuses),
            "site": f"s{rng.randrange(10)}",
            "fw": rng.choice(["1.2.0", "1.3.1", "2.0.0"]),
        }
        for i in range(n)
    ]


def make_rules(n: int, devices: int, rng: random.Random) -> dict[str, str]:
    """80 % per-device rules, 10 % fleet-wide thresholds, 10 % site/firmware rules."""
    rules: dict[str, str] = {}
    for i in range(n):
        dev = f"dev-{rng.randrange(devices):03d}"
        kind = i % 10
        if kind < 4:
            text = f"device == '{dev}' and temp > {rng.uniform(75, 110):.1f}"
        elif kind < 6:
            cpu, mem = rng.randrange(70, 100), rng.randrange(50, 95)
            text = f"device == '{dev}' and cpu > {cpu} and mem > {mem}"
        elif kind < 8:
            text = f"device == '{dev}' and status in ['fault', 'alarm'] and temp > 40"
        elif kind == 8:
            text = rng.choice(
                [
                    f"temp > {rng.uniform(100, 130):.1f}",
                    f"cpu >= 100 and mem > {rng.randrange(90, 100)}",
                    f"temp < {rng.uniform(-10, 5):.1f}",
                ]
            )
        else:
            text = rng.choice(
                [
                    f"site == 's{rng.randrange(10)}' and temp > {rng.uniform(95, 120):.1f}",
                    f"fw startswith '1.' and cpu > {rng.randrange(95, 101)} and status != 'ok'",
                ]
            )
        rules[f"r{i:04d}"] = text
    return rules


def handwritten(event: Event) -> bool:
    """What a careful person writes for ``temp > 90 and cpu > 80``."""
    temp = event.get("temp")
    if temp is None or not temp > 90:
        return False
    cpu = event.get("cpu")
    return cpu is not None and cpu > 80


def _rate(events: list[dict[str, Any]], fn: Callable[[Event], object]) -> float:
    start = time.perf_counter()
    for ev in events:
        fn(ev)
    return len(events) / (time.perf_counter() - start)


def _naive(compiled: list[tuple[str, Callable[[Event], bool]]]) -> Callable[[Event], list[str]]:
    def match(event: Event) -> list[str]:
        return [pid for pid, fn in compiled if fn(event)]

    return match


def _swap_ms(stored: dict[str, bytes], events: list[dict[str, Any]], current: PatternSet) -> float:
    """Build a set from stored (JSON AST) patterns in a worker thread while this thread keeps
    matching events, then swap; returns the time from start of the build to the swap."""
    box: dict[str, PatternSet] = {"set": current}
    done = threading.Event()
    elapsed: list[float] = []

    def build() -> None:
        start = time.perf_counter()
        new = PatternSet.compile({pid: decode(data) for pid, data in stored.items()})
        box["set"] = new  # the swap: one reference assignment between two events
        elapsed.append((time.perf_counter() - start) * 1000)
        done.set()

    worker = threading.Thread(target=build, name="rules-build")
    worker.start()
    i = 0
    while not done.is_set():
        box["set"].match(events[i % len(events)])
        i += 1
    worker.join()
    return elapsed[0]


def _paired(
    runs: int, a: Callable[[], float], b: Callable[[], float]
) -> tuple[float, float, float]:
    """Medians of a and b measured alternately, and the median of their per-run ratios
    (pairing cancels most of the drift of a shared, busy machine)."""
    pairs = [(a(), b()) for _ in range(runs)]
    return (
        statistics.median(x for x, _ in pairs),
        statistics.median(y for _, y in pairs),
        statistics.median(x / y for x, y in pairs),
    )


def run(args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(args.seed)
    events = make_events(args.events, args.devices, rng)
    runs = args.runs

    single_q = reduce(parse("temp > 90 and cpu > 80"))
    assert isinstance(single_q, Cond)
    single = compile_query(single_q)
    assert all(single(e) == handwritten(e) for e in events[:2000])
    progress("single pattern vs hand-written ...")
    single_rate, hand_rate, single_ratio = _paired(
        runs, lambda: _rate(events, single), lambda: _rate(events, handwritten)
    )

    rules = make_rules(args.rules, args.devices, rng)
    progress(f"compiling {len(rules)} patterns ...")
    start = time.perf_counter()
    pattern_set = PatternSet.compile(rules)
    build_ms = (time.perf_counter() - start) * 1000
    compiled = []
    for pid, text in rules.items():
        cond = reduce(parse(text))
        assert isinstance(cond, Cond)
        compiled.append((pid, compile_query(cond)))
    naive = _naive(compiled)
    naive_events = events[: max(200, len(events) // 50)]
    for ev in naive_events[:500]:
        assert sorted(pattern_set.match(ev)) == naive(ev)
    progress("indexed set vs one function per pattern ...")
    matched = sum(len(pattern_set.match(e)) for e in events)
    set_rate, naive_rate, speedup = _paired(
        runs, lambda: _rate(events, pattern_set.match), lambda: _rate(naive_events, naive)
    )

    progress("swap to another 1000 patterns under load ...")
    other = make_rules(args.rules, args.devices, random.Random(args.seed + 1))
    stored = {pid: encode(parse(text)) for pid, text in other.items()}
    swap_ms = median_of(runs, lambda: _swap_ms(stored, events, pattern_set))

    result: dict[str, object] = {
        "single_rule_events_per_s": round(single_rate),
        "handwritten_events_per_s": round(hand_rate),
        "single_ratio": round(single_ratio, 3),
        "rules": len(rules),
        "events_per_s": round(set_rate),
        "naive_events_per_s": round(naive_rate),
        "speedup": round(speedup, 1),
        "matches_per_event": round(matched / len(events), 3),
        "build_ms": round(build_ms, 1),
        "swap_ms": round(swap_ms, 1),
        "events": len(events),
        "runs": runs,
    }
    result.update(_windowed(events, runs))
    return result


def _windowed(events: list[dict[str, Any]], runs: int) -> dict[str, object]:
    """``windowed_events_per_s``: 100 windowed patterns, each "3 times within 60 s per
    device", driven by the event stream (used by ``cybernetic bench rules``)."""
    patterns = {
        f"w{i:03d}": f"device == 'dev-{i:03d}' and temp > {80 + i % 10}" for i in range(50)
    } | {f"w{i:03d}": f"cpu > {90 + i % 10} and mem > {i}" for i in range(50, 100)}
    windows = {
        f"win{i:03d}": WindowSpec(pattern=pid, count=3, within_s=60.0)
        for i, pid in enumerate(patterns)
    }
    fake_now = [0.0]
    engine = RuleEngine.build(patterns, windows=windows, clock=lambda: fake_now[0])
    rates: list[float] = []
    fired = 0
    for _ in range(runs):
        start = time.perf_counter()
        for i, ev in enumerate(events):
            fake_now[0] = i * 0.01  # 100 events per simulated second
            fired += len(engine.process(ev))
        rates.append(len(events) / (time.perf_counter() - start))
    return {
        "windowed_patterns": len(windows),
        "windowed_events_per_s": round(statistics.median(rates)),
        "windowed_outputs_per_event": round(fired / (len(events) * runs), 4),
    }
