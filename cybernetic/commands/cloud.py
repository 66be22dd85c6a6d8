"""`cybernetic cloud run -c FILE`: the cloud process."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from amcp import __version__
from amcp.runtime.logs import log_shutdown, log_startup, setup_logging
from amcp.runtime.service import run_loop
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
    setup_logging(config.log.level, fmt=config.log.format)
    log_startup("cloud", __version__, config.cloud.id, args.config)
    try:
        cloud = Cloud(config, config_path=args.config)
    except (OSError, ValueError) as exc:
        log.critical("cloud cannot start", extra={"error": str(exc)})
        log_shutdown("cloud", f"cannot start: {exc}", exit_code=1)
        return 1
    code = run_loop(cloud.serve)
    log_shutdown("cloud", "stop requested" if code == 0 else "supervisor gave up", exit_code=code)
    return code
