"""Every verb, given bad arguments and bad files, fails with one line and never a traceback.

The verbs are found by walking the argparse tree, so a new verb is covered without editing
this file. For each verb, in a subprocess as a user would run it:

- an unknown option, a value its type refuses, a choice it does not offer, and no arguments
  at all when it has required ones: exit 2, one line on stderr;
- ``--help``: exit 0 and a usage text;
- every path option or argument: a directory where a file is expected, or a file where a
  directory is: exit != 0, one line; a missing path and a file of garbage: no traceback and,
  when the verb refuses them, one line (a missing output path is often fine: ``keys gen``
  creates its directory).

Paths are classified by their metavar (``FILE``, ``DIR``; a ``...DIR`` destination). The
default paths of every verb point into the test's folder (the ``CYBERNETIC_*`` variables),
and the test checks that /etc/cybernetic is as it was: some verbs write there by default.
``demo`` (its own module, which starts brokers) gets the parse-time cases only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cybernetic.cli import build_parser

CLI = [sys.executable, "-m", "cybernetic"]
PARSE_ONLY = {("demo",)}
"""Verbs that get only the cases argparse refuses (nothing of theirs runs)."""
EXTRA: dict[tuple[str, ...], dict[str, str]] = {
    ("patterns", "add"): {"id": "r1", "when": "temp > 1"},
    ("patterns", "test"): {"when": "temp > 1"},
}
"""Arguments that are not required by argparse but without which the verb stops before it
reads its files (a rule to add or to test); left out when they exclude the one tried."""
GARBAGE = b"\x00\xff\xfe garbage = [ not any format\n\x89PNG\r\n"


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, (*path, name))
            return
    yield path, parser


VERBS = dict(_leaves(build_parser()))


def test_the_tree_has_every_command_and_each_verb_a_handler() -> None:
    commands = {path[0] for path in VERBS}
    assert {"gateway", "cloud", "patterns", "pki", "keys", "devices", "bench"} <= commands
    assert len(VERBS) > 30
    for path, parser in VERBS.items():
        assert callable(parser.get_default("handler")), path


def _is_path(action: argparse.Action) -> bool:
    return action.type is Path


def _is_dir(action: argparse.Action) -> bool:
    return "DIR" in str(action.metavar or action.dest).upper()


@dataclass
class Case:
    argv: list[str]
    must_fail: bool
    why: str


class Folder:
    """A fresh folder per verb, with a directory, a garbage file and missing names in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.a_dir = root / "a-dir"
        self.a_dir.mkdir()
        self.garbage = root / "garbage.bin"
        self.garbage.write_bytes(GARBAGE)
        self.n = 0

    def missing(self, what: str) -> Path:
        self.n += 1
        return self.root / f"missing-{self.n}-{what}"


def _value(action: argparse.Action, folder: Folder) -> str:
    """A value argparse accepts, for filling a required argument."""
    if action.choices:
        return str(next(iter(action.choices)))
    if _is_path(action):
        return str(folder.missing("dir" if _is_dir(action) else "file"))
    if "broker" in action.dest:
        return "127.0.0.1:9"  # the discard port: nothing listens, refused at once
    if action.type in {int, float} or "count" in str(action.type):
        return "1"
    return "x"


def _required(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            if action.nargs not in ("?", "*"):
                out.append(action)
        elif action.required or action.dest in dict(parser.get_default("_cli_required") or ()):
            out.append(action)
    return out


def _argv(
    parser: argparse.ArgumentParser, folder: Folder, given: dict[argparse.Action, str] | None = None
) -> list[str]:
    """Every required argument filled (``given`` wins), and the other ``given`` ones."""
    given = dict(given or {})
    excluded = {
        other
        for group in parser._mutually_exclusive_groups
        if any(a in given for a in group._group_actions)
        for other in group._group_actions
    }
    extra = EXTRA.get(tuple(parser.prog.split()[1:]), {})
    for action in parser._actions:
        if action.dest in extra and action not in given and action not in excluded:
            given[action] = extra[action.dest]
    options: list[str] = []
    positionals: list[str] = []
    for action in _required(parser):
        value = given.pop(action, None) or _value(action, folder)
        if action.option_strings:
            options += [action.option_strings[-1], value]
        else:
            positionals.append(value)
    for action, value in given.items():
        if action.option_strings:
            options += [action.option_strings[-1], value]
        else:
            positionals.append(value)
    return options + positionals


def _with(
    parser: argparse.ArgumentParser, folder: Folder, action: argparse.Action, value: str
) -> list[str]:
    return _argv(parser, folder, {action: value})


def _cases(path: tuple[str, ...], parser: argparse.ArgumentParser, folder: Folder) -> list[Case]:
    cases = [Case([*_argv(parser, folder), "--no-such-option"], True, "unknown option")]
    if _required(parser):
        cases.append(Case([], True, "no arguments"))
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if action.choices:
            cases.append(Case(_with(parser, folder, action, "bogus-choice"), True, "choice"))
        elif action.type is not None and not _is_path(action) and action.type is not str:
            cases.append(Case(_with(parser, folder, action, "not-a-value"), True, "bad value"))
    if path in PARSE_ONLY:
        return cases
    for action in parser._actions:
        if not _is_path(action):
            continue
        name = action.option_strings[-1] if action.option_strings else action.dest
        if _is_dir(action):
            cases.append(
                Case(_with(parser, folder, action, str(folder.garbage)), True, f"{name}: a file")
            )
        else:
            cases.append(
                Case(_with(parser, folder, action, str(folder.a_dir)), True, f"{name}: a dir")
            )
            cases.append(
                Case(_with(parser, folder, action, str(folder.garbage)), False, f"{name}: junk")
            )
        missing = str(folder.missing(action.dest))
        cases.append(Case(_with(parser, folder, action, missing), False, f"{name}: missing"))
    return cases


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYBERNETIC")}
    return env | {
        "CYBERNETIC_KEY_DIR": str(root / "default-keys"),
        "CYBERNETIC_PKI_DIR": str(root / "default-pki"),
        "CYBERNETIC_PASSWD_FILE": str(root / "default-passwd"),
        "CYBERNETIC_GATEWAY_CONFIG": str(root / "default-gateway.toml"),
        "CYBERNETIC_TLS_DIR": str(root / "default-tls"),
    }


def _etc_state() -> list[tuple[str, int, float]]:
    root = Path("/etc/cybernetic")
    if not root.exists():
        return []
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*"))


def _run(argv: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv],
        capture_output=True,
        text=True,
        cwd=root,
        env=_env(root),
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("path", sorted(VERBS), ids=" ".join)
def test_bad_input_gets_one_line_and_no_traceback(path: tuple[str, ...], tmp_path: Path) -> None:
    parser = VERBS[path]
    folder = Folder(tmp_path)
    etc = _etc_state()
    problems = []
    for case in _cases(path, parser, folder):
        argv = [*path, *case.argv] if case.argv else list(path)
        out = _run(argv, tmp_path)
        lines = out.stderr.strip().splitlines()
        what = f"{' '.join(argv)} ({case.why}) -> {out.returncode}: {out.stderr.strip()}"
        if "Traceback" in out.stderr + out.stdout:
            problems.append(f"traceback: {what}")
        elif case.must_fail and out.returncode == 0:
            problems.append(f"accepted: {what}")
        elif out.returncode != 0 and len(lines) != 1:
            problems.append(f"not one line: {what}")
    assert problems == []
    assert _etc_state() == etc


@pytest.mark.parametrize("path", sorted(VERBS), ids=" ".join)
def test_help_works_on_every_verb(path: tuple[str, ...], tmp_path: Path) -> None:
    out = _run([*path, "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: cybernetic " + " ".join(path))
    # every option says what it is for
    for action in VERBS[path]._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help, f"{' '.join(path)} {action.option_strings} has no help"
