"""What the command verbs share: loading a configuration file and reporting its errors."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import msgspec

from amcp.runtime.config import ConfigError, load

T = TypeVar("T", bound=msgspec.Struct)


def report_config_errors(exc: ConfigError) -> None:
    """Print every error with its path, one per line (values are never printed)."""
    for err in exc.errors:
        print(f"{exc.source}: {err}")  # noqa: T201 - the command's own output


def load_config(path: Path, tp: type[T]) -> T | None:
    """The decoded file, or None after printing what is wrong with it (callers exit 2)."""
    try:
        return load(path, tp)
    except ConfigError as exc:
        report_config_errors(exc)
        return None
