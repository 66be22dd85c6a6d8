"""A provider's key, from the environment or a file only its owner may read.

The key is read once when the adapter is built and held in its request headers; it is never
put in a log record, a metric, an error message or argv. Errors name the variable or the file
and what is wrong with it, never what it holds.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cloud.llm.errors import LlmKeyError
from cloud.llm.settings import ProviderSettings


def read_key(settings: ProviderSettings, environ: Mapping[str, str] | None = None) -> str:
    """The key, or "" when the provider takes none (a local server)."""
    env = os.environ if environ is None else environ
    name = settings.label
    if settings.key_env:
        value = env.get(settings.key_env, "").strip()
        if not value:
            raise LlmKeyError(name, f"environment variable {settings.key_env} is not set")
        return value
    if settings.key_file:
        return _from_file(name, Path(settings.key_file))
    return ""


def _from_file(name: str, path: Path) -> str:
    try:
        info = path.stat()
    except OSError as exc:
        raise LlmKeyError(name, f"key_file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise LlmKeyError(name, f"key_file {path}: not a regular file")
    if info.st_mode & 0o077:
        raise LlmKeyError(
            name,
            f"key_file {path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read it "
            "(chmod 600 it)",
        )
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise LlmKeyError(name, f"key_file {path}: unreadable ({type(exc).__name__})") from None
    if not value or "\n" in value:
        raise LlmKeyError(name, f"key_file {path}: must hold the key alone, on one line")
    return value
