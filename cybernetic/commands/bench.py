"""`cybernetic bench NAME [--json]`: run one benchmark from `cybernetic.bench`."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
from types import ModuleType
from typing import Any

from cybernetic import bench


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
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
        p.set_defaults(handler=_run, bench_module=module)


def _run(args: argparse.Namespace) -> int:
    result: dict[str, object] = args.bench_module.run(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        width = max((len(k) for k in result), default=0)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0
