"""The `cybernetic` command line: its parser, its exit codes and how it reports errors.

Each command group is one module in `cybernetic.commands`, named after its command, exposing
``register(subparsers) -> None``; modules are discovered, so adding a verb never edits a
shared list. A handler returns the process exit code. Only the module of the command being
run is imported: the gateway daemon does not load the benchmarks, the demo or the cloud
(about 30 MB of resident memory on an edge device).

Every error reaches the user as **one line** on stderr that names what was wrong and what to
do, with an exit code from :data:`EXIT_CODES` (docs/cli.md); a traceback is never shown
(``CYBERNETIC_DEBUG=1`` shows it, for a bug report). Handlers raise :class:`CliError` with
the message and the code; :func:`main` turns anything else that escapes into one line too.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import msgspec

from amcp import __version__
from amcp.runtime.config import ConfigError, load
from cybernetic import commands

T = TypeVar("T", bound=msgspec.Struct)

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
INTERRUPTED = 130
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (OK, "done"),
    (FAILED, "failed while running, or done only in part (the message says which)"),
    (USAGE, "refused, nothing done: bad arguments, or a missing, invalid or wrong file or id"),
    (UNREACHABLE, "not reachable: a broker or a gateway did not answer in time"),
    (4, "intent send only: no gateway offers the capability"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
    (143, "demo only: ended at once by a second SIGTERM"),
)
"""The exit codes every command uses (docs/cli.md)."""
DEBUG_ENV = "CYBERNETIC_DEBUG"


def exit_codes_text() -> str:
    lines = ["exit codes:"]
    for code, text in EXIT_CODES:
        lines.append(f"  {code:>3}  {text}")
    lines.append(f"errors are one line on stderr; {DEBUG_ENV}=1 shows a traceback (for a bug).")
    return "\n".join(lines)


class CliError(Exception):
    """What the user did wrong or what failed, and what to do: printed as one line.

    ``lines`` replaces that line with several, each complete in itself (every bad field of
    a configuration file, with its path)."""

    def __init__(self, message: str, code: int = USAGE, *, lines: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.lines = tuple(lines)


class CliParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line: what is wrong, where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


# -- options accepted before or after the verb ----------------------------------------------
_REQUIRED = "_cli_required"
_PARSER = "_cli_parser"


def group_option(
    parser: argparse.ArgumentParser,
    verbs: Iterable[argparse.ArgumentParser],
    *flags: str,
    required: bool = False,
    **kwargs: Any,
) -> None:
    """An option of a command group, accepted before its verb and after it.

    ``keys --dir D gen`` and ``keys gen --dir D`` mean the same. The group parser holds the
    default; on each verb the option is added with no default, so it replaces the group's
    value only when given there. ``required`` is checked after parsing (by :func:`main`),
    since it may be given on either side. Do not put ``%(default)s`` in the help text.
    """
    action = parser.add_argument(*flags, **({"default": None} if required else {}) | kwargs)
    for verb in verbs:
        verb.add_argument(*flags, **kwargs | {"default": argparse.SUPPRESS})
        if required:
            before = verb.get_default(_REQUIRED) or ()
            verb.set_defaults(
                **{_REQUIRED: (*before, (action.dest, "/".join(flags))), _PARSER: verb}
            )


def _check_required(args: argparse.Namespace) -> None:
    for dest, flags in getattr(args, _REQUIRED, ()):
        if getattr(args, dest, None) is None:
            getattr(args, _PARSER).error(f"the following arguments are required: {flags}")


# -- what the verbs share -------------------------------------------------------------------
def iso_ms(ms: float | None) -> str:
    """A UTC time in ISO 8601 with milliseconds, ``2026-05-01T12:00:00.250Z`` (``-``: none)."""
    if ms is None:
        return "-"
    seconds, millis = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def one_line(text: str) -> str:
    """A message as one line: later lines (a caret under a position, say) are dropped when
    the first names the position, else joined with ``; ``."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    if "column" in lines[0] or "line " in lines[0]:
        return lines[0]
    return "; ".join(lines)


_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EISDIR: "it is a directory; give a file",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EACCES: "run as a user that may read and write it (the service user, or sudo)",
    errno.EPERM: "run as a user that may change it (the service user, or sudo)",
    errno.EEXIST: "remove it first or choose another path",
    errno.ENOSPC: "free some space",
    errno.EROFS: "the file system is read-only",
}


def describe_os_error(exc: OSError, what: str = "") -> str:
    """``<path>: <reason> (<what to do>)`` for a failed file operation."""
    name = exc.filename if exc.filename is not None else what
    reason = exc.strerror or str(exc)
    hint = _OS_HINTS.get(exc.errno or 0)
    subject = f"{what} {name}" if what and name != what else str(name or what or "file")
    return f"{subject}: {reason}" + (f" ({hint})" if hint else "")


def config_error_lines(exc: ConfigError) -> list[str]:
    """Every error of a configuration file with its path, one a line (never a value)."""
    lines = []
    for err in exc.errors:
        hint = ""
        if err.startswith("cannot read"):
            hint = " (give the path of an existing configuration file)"
        lines.append(f"{exc.source}: {err}{hint}")
    return lines


def report_config_errors(exc: ConfigError) -> None:
    """Print every error with its path, one per line on stderr (values are never printed)."""
    for line in config_error_lines(exc):
        _stderr(line)


def load_config(path: Path, tp: type[T]) -> T | None:
    """The decoded file, or None after printing what is wrong with it (callers exit 2)."""
    try:
        return load(path, tp)
    except ConfigError as exc:
        report_config_errors(exc)
        return None


def require_config(path: Path, tp: type[T]) -> T:
    """The decoded file; or :class:`CliError` (exit 2) with a line for each bad field."""
    try:
        return load(path, tp)
    except ConfigError as exc:
        raise CliError(str(exc), lines=config_error_lines(exc)) from exc


# -- the parser and the entry point ---------------------------------------------------------
def command_names() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(commands.__path__))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or for ``only`` (a command name) alone."""
    parser = CliParser(
        prog="cybernetic",
        description="Cybernetic Edge: edge-first IoT gateway with cloud sync. "
        "Options of a command may come before or after its verb; every command has --help.",
        epilog=exit_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cybernetic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_names():
        if only is None or name == only:
            importlib.import_module(f"{commands.__name__}.{name}").register(sub)
    return parser


def _unexpected(exc: BaseException) -> int:
    if isinstance(exc, OSError):
        code = USAGE if isinstance(exc, FileNotFoundError | IsADirectoryError) else FAILED
        _print_error(describe_os_error(exc))
        return code
    if isinstance(exc, sqlite3.DatabaseError):
        _print_error(f"database error: {one_line(str(exc))} (is the file the right database?)")
        return FAILED
    _print_error(
        f"unexpected {type(exc).__name__}: {one_line(str(exc))[:300]} (a bug: please report "
        f"it with the output of the same command run with {DEBUG_ENV}=1)"
    )
    return FAILED


def _stderr(line: str) -> None:
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def _print_error(message: str) -> None:
    _stderr(f"error: {one_line(message)}")


def _run(argv: list[str]) -> int:
    first = argv[0] if argv else None
    parser = build_parser(first if first in command_names() else None)
    args = parser.parse_args(argv)
    _check_required(args)
    code: int = args.handler(args)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; usage errors raise SystemExit(2) as argparse does, every other error
    is printed as one line and returned as its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except CliError as exc:
        for line in exc.lines:
            _stderr(one_line(line))
        if not exc.lines:
            _print_error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        _stderr("interrupted")
        return INTERRUPTED
    except BrokenPipeError:  # `cybernetic ... | head`: the reader has what it wanted
        with open(os.devnull, "w") as devnull:  # noqa: PTH123 - a descriptor for stdout
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return OK
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        return _unexpected(exc)
