"""`cybernetic config check FILE`: validate a gateway or cloud configuration file.

The kind is told by the file's top-level table (``[gateway]`` or ``[cloud]``) unless
``--kind`` says. Every error is printed with its path, one a line on stderr; the exit status
is 2 when any.
Values are never printed, so a mistyped secret does not end up in a terminal log.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from cloud.config import CloudConfig
from cybernetic.cli import require_config
from gateway.config import GatewayConfig

KINDS: dict[str, type[msgspec.Struct]] = {"gateway": GatewayConfig, "cloud": CloudConfig}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("config", help="configuration tools")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser("check", help="validate a configuration file; exit 2 on errors")
    check.add_argument("file", type=Path, metavar="FILE", help="gateway.toml or cloud.toml")
    check.add_argument("--kind", choices=sorted(KINDS), help="gateway or cloud (default: guess)")
    check.set_defaults(handler=_check)


def guess_kind(path: Path) -> str | None:
    """``gateway`` or ``cloud`` by the file's top-level table; None when it cannot tell."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return next((k for k in KINDS if k in data), None)


def _check(args: argparse.Namespace) -> int:
    kind = args.kind or guess_kind(args.file) or "gateway"
    require_config(args.file, KINDS[kind])
    print(f"{args.file}: valid {kind} configuration")
    return 0
