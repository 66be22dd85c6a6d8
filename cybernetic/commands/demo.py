"""`cybernetic demo`: run the product on an embedded default (see :mod:`cybernetic.demo`)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from cybernetic.cli import CliError
from cybernetic.demo import (
    DRAIN_S,
    LIMIT_AT_S,
    MAX_DEVICES,
    STOP_GRACE_S,
    DemoError,
    DemoOptions,
    run_demo,
)

EPILOG = f"""\
While it runs it prints what flows, with rates, and the pattern alerts, policy flags and other
events as they happen. After {LIMIT_AT_S:g} s it sets a limit on the last device from the cloud
(half its rate, as `cybernetic fleet limit set` does) and shows the gateway applying it and
refusing the excess. At the end a summary accounts for every published reading. Ctrl-C or
SIGTERM stops it cleanly (in-flight readings get {DRAIN_S:g} s to reach the cloud, the whole
stop at most {STOP_GRACE_S:g} s); a second Ctrl-C or SIGTERM stops everything at once. No
process outlives the demo, even if it is killed. Exit codes: 0 stopped cleanly, 1 could not
run, 2 invalid options, 130 (Ctrl-C) or 143 (SIGTERM) stopped at once by a second signal."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="brokers, cloud, gateway and simulated devices on this machine",
        description="Brokers, cloud, gateway and simulated devices on this machine.",
        epilog=EPILOG,
    )
    p.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: at Ctrl-C)"
    )
    p.add_argument(
        "--devices", type=int, default=5, help=f"simulated devices, 1 to {MAX_DEVICES} (default 5)"
    )
    p.add_argument(
        "--interval",
        type=float,
        default=0.5,
        help="seconds between a device's readings (default 0.5; 0: as fast as acknowledged)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="keep state in this folder (created if missing) instead of a temporary one",
    )
    p.add_argument("--quiet", action="store_true", help="print only the closing summary")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    opts = DemoOptions(args.duration, args.devices, args.interval, args.state_dir, args.quiet)
    problem = opts.problem()
    if problem is not None:  # before anything starts
        raise CliError(problem)
    try:
        return asyncio.run(run_demo(opts))
    except DemoError as exc:
        raise CliError(str(exc), exc.code) from exc
