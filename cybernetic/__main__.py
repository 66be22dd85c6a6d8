"""The `cybernetic` command: ``python -m cybernetic`` and the console script.

The parser, the exit codes and the error reporting live in :mod:`cybernetic.cli`.
"""

from __future__ import annotations

import sys

from cybernetic.cli import build_parser, command_names, main

__all__ = ["build_parser", "command_names", "main"]

if __name__ == "__main__":
    sys.exit(main())
