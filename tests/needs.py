"""What a test needs from the host, said in one place: in CI a missing need fails the test
(nothing may skip there); elsewhere the test is skipped with the reason and how to run it."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def needs(available: bool, what: str) -> None:
    """Go on when ``available``; else fail in CI, skip (saying why) elsewhere."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what}: CI must provide it, where no test may skip")
    pytest.skip(f"{what} (CI runs it; as root, `sudo make test` does too)")


def needs_root(what: str) -> None:
    needs(os.geteuid() == 0, f"{what} needs root")
