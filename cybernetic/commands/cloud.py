"""`cybernetic cloud run -c FILE`: the cloud process."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from amcp.runtime.service import run_daemon
from cloud.app import Cloud
from cloud.config import CloudConfig
from cybernetic.cli import group_option, require_config

log = logging.getLogger(__name__)


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
    return run_daemon(
        "cloud",
        config.cloud.id,
        args.config,
        config.log,
        lambda: Cloud(config, config_path=args.config),
    )
