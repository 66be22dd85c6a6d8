"""`cybernetic demo [--duration SECONDS]`: run the product on an embedded default."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from cybernetic.demo import DemoOptions, run_demo


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="brokers, cloud, gateway and simulated devices on this machine"
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--devices", type=int, default=5, help="simulated devices (default 5)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between readings")
    p.add_argument("--state-dir", type=Path, help="keep state here instead of a temporary folder")
    p.add_argument("--quiet", action="store_true", help="no periodic account")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    opts = DemoOptions(args.duration, args.devices, args.interval, args.state_dir, args.quiet)
    return asyncio.run(run_demo(opts))
