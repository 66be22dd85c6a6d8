"""The `cybernetic` command.

Each command group is one module in `cybernetic.commands` exposing
``register(subparsers) -> None``; modules are discovered, so adding a verb never
edits a shared list. A handler returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from amcp import __version__
from cybernetic import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cybernetic",
        description="Cybernetic Edge: edge-first IoT gateway with cloud sync.",
    )
    parser.add_argument("--version", action="version", version=f"cybernetic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
