"""The `cybernetic` command.

Each command group is one module in `cybernetic.commands`, named after its command, exposing
``register(subparsers) -> None``; modules are discovered, so adding a verb never
edits a shared list. A handler returns the process exit code. Only the module of the command
being run is imported: the gateway daemon does not load the benchmarks, the demo or the cloud
(about 30 MB of resident memory on an edge device).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from amcp import __version__
from cybernetic import commands


def command_names() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(commands.__path__))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or for ``only`` (a command name) alone."""
    parser = argparse.ArgumentParser(
        prog="cybernetic",
        description="Cybernetic Edge: edge-first IoT gateway with cloud sync.",
    )
    parser.add_argument("--version", action="version", version=f"cybernetic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_names():
        if only is None or name == only:
            importlib.import_module(f"{commands.__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    parser = build_parser(first if first in command_names() else None)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
