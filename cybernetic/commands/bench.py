"""`cybernetic bench NAME [--json]`: run one benchmark from `cybernetic.bench`.

A benchmark's own options get a help text here when it gives none (:data:`HELP`), every
option shows its default, and counts are checked before anything runs: ``--runs 0`` is a
usage error (exit 2), not a failure in the middle of a measurement.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import Any

from cybernetic import bench
from cybernetic.cli import group_option

HELP = {
    "runs": "runs per figure; medians are reported",
    "messages": "readings queued in the broker per run",
    "devices": "simulated devices the readings come from",
    "live_seconds": "seconds of live traffic for the latency figures",
    "keys": "keys each side overwrites while offline",
    "overwrites": "overwrites of those keys while offline",
    "replay_checks": "replay-defence checks per run",
    "nonce_fraction": "share of the replay checks that use a nonce (0 to 1); the rest counters",
    "sites": "sites whose rows are merged",
    "seed": "random seed of the generated rules and events",
}
"""Help texts for options that a benchmark module adds without one, by destination."""
FRACTIONS = frozenset({"nonce_fraction"})
ZERO_ALLOWED = frozenset({"seed"})


def _benchmarks() -> dict[str, ModuleType]:
    return {
        info.name: importlib.import_module(f"{bench.__name__}.{info.name}")
        for info in pkgutil.iter_modules(bench.__path__)
        if not info.name.startswith("_")
    }


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "bench", help="run a benchmark and print its figures"
    )
    bench_sub = parser.add_subparsers(dest="bench_name", metavar="NAME", required=True)
    for name, module in sorted(_benchmarks().items()):
        p = bench_sub.add_parser(name, help=getattr(module, "DESCRIPTION", ""))
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
        _complete(p)
        p.set_defaults(handler=_run, bench_module=module)
    group_option(
        parser,
        bench_sub.choices.values(),
        "--json",
        action="store_true",
        help="print one JSON object on stdout",
    )


def _complete(parser: argparse.ArgumentParser) -> None:
    """Give every option of a benchmark a help text, its default and a checked type."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of them
        if not action.option_strings or action.dest == "help":
            continue
        text = action.help or HELP.get(action.dest) or action.dest.replace("_", " ")
        if action.default is not None and action.default is not argparse.SUPPRESS:
            text = f"{text} (default %(default)s)"
        action.help = text
        if action.type is int:
            action.type = _count(minimum=0 if action.dest in ZERO_ALLOWED else 1)
        elif action.type is float:
            action.type = _fraction if action.dest in FRACTIONS else _positive
        if action.metavar is None and action.type is not None:
            action.metavar = "X" if action.type in {_positive, _fraction} else "N"


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    parse.__name__ = "count"
    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    result: dict[str, object] = args.bench_module.run(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        width = max((len(k) for k in result), default=0)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0
