"""`cybernetic gateway run -c FILE`: the edge daemon."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from amcp.runtime.config import ConfigError, load
from amcp.runtime.logs import setup_logging
from amcp.runtime.service import run_loop
from gateway.app import Gateway
from gateway.config import GatewayConfig

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("gateway", help="the edge gateway daemon")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    run = verbs.add_parser("run", help="run the gateway in the foreground (systemd: Type=notify)")
    run.add_argument("-c", "--config", required=True, type=Path, help="gateway.toml")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config, GatewayConfig)
    except ConfigError as exc:
        for err in exc.errors:
            print(f"{exc.source}: {err}")
        return 2
    setup_logging(config.log.level)
    try:
        gateway = Gateway(config, config_path=args.config)
    except (OSError, ValueError) as exc:
        log.critical("gateway cannot start", extra={"error": str(exc)})
        return 1
    return run_loop(gateway.serve)
