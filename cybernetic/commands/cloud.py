"""`cybernetic cloud run -c FILE`: the cloud process; `cybernetic cloud migrate`: its schema."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from amcp.runtime.service import run_daemon
from cloud.app import Cloud
from cloud.config import CloudConfig
from cloud.storage.engine import StorageConfigError
from cloud.storage.settings import engine_for
from cybernetic.cli import UNREACHABLE, CliError, group_option, require_config

MIGRATE_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("cloud", help="the cloud tier")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    run = verbs.add_parser("run", help="run the cloud process in the foreground")
    run.set_defaults(handler=_run)
    migrate = verbs.add_parser(
        "migrate",
        help="bring the cloud store's schema up to date ([storage]: SQLite or PostgreSQL)",
        description="Apply the schema steps the cloud store lacks, each in its own "
        "transaction, and list them; with --dry-run only list them. `cloud run` does this at "
        'start unless [storage] migrate = "check".',
    )
    migrate.add_argument(
        "--dry-run", action="store_true", help="list the pending steps, change nothing"
    )
    migrate.add_argument(
        "--timeout",
        type=float,
        default=MIGRATE_TIMEOUT_S,
        metavar="S",
        help="how long to wait for the database server (default: %(default)g)",
    )
    migrate.set_defaults(handler=_migrate)
    group_option(
        parser,
        [run, migrate],
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


def _migrate(args: argparse.Namespace) -> int:
    config = require_config(args.config, CloudConfig)
    try:
        engine = engine_for(config.storage, Path(config.cloud.state_dir), on_open="leave")
    except StorageConfigError as exc:
        raise CliError(str(exc)) from exc
    where = engine.describe()

    async def run() -> list[str]:
        if config.storage.engine == "postgresql":
            await engine.open()  # SQLite reads the file's version, and migrates, unopened
        try:
            steps = await engine.pending() if args.dry_run else await engine.migrate()
        finally:
            await engine.close()
        return [f"{s.version}  {s.name}" for s in steps]

    try:
        lines = asyncio.run(_within(run(), where, args.timeout))
    except StorageConfigError as exc:
        raise CliError(str(exc)) from exc
    verb = "pending" if args.dry_run else "applied"
    if not lines:
        print(f"{where}: schema up to date")
    else:
        print(f"{where}: {len(lines)} step(s) {verb}")
        for line in lines:
            print(f"  {line}")
    return 0


async def _within(job: Any, where: str, seconds: float) -> list[str]:
    try:
        return list(await asyncio.wait_for(job, seconds))
    except TimeoutError:
        raise CliError(f"{where}: not reachable within {seconds:g}s", UNREACHABLE) from None
