"""`cybernetic cloud run -c FILE`: the cloud process."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from amcp.runtime.logs import setup_logging
from amcp.runtime.service import run_loop
from cloud.app import Cloud
from cloud.config import CloudConfig
from cybernetic.cli import group_option, require_config


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("cloud", help="the cloud tier")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    run = verbs.add_parser("run", help="run the cloud process in the foreground")
    run.set_defaults(handler=_run)
    group_option(
        parser,
        [run],
        "-c",
        "--config",
        required=True,
        type=Path,
        metavar="FILE",
        help="the cloud's cloud.toml",
    )


def _run(args: argparse.Namespace) -> int:
    config = require_config(args.config, CloudConfig)
    setup_logging(config.log.level)
    return run_loop(Cloud(config, config_path=args.config).serve)
