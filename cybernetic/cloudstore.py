"""Reading the cloud store from the command line (``audit``, ``trace``, ``mitigation``).

:func:`read` opens the store ``[storage]`` names in the cloud's configuration (SQLite or
PostgreSQL), runs ``fn(tx, state_dir)`` in one read snapshot beside a running cloud, and closes
it; a store out of reach within :data:`TIMEOUT_S` is a one-line error (exit 3), as is a
schema the binary does not know (``cybernetic cloud migrate``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cloud.config import CloudConfig
from cloud.storage.engine import Engine, StorageConfigError, Tx
from cloud.storage.settings import engine_for
from cybernetic.cli import UNREACHABLE, CliError, require_config

TIMEOUT_S = 30.0
T = TypeVar("T")


def read(config_path: Path, fn: Callable[[Tx, Path], T]) -> T:
    config = require_config(config_path, CloudConfig)
    try:
        engine: Engine = engine_for(config.storage, Path(config.cloud.state_dir), on_open="check")
    except StorageConfigError as exc:
        raise CliError(str(exc)) from exc
    state = Path(config.cloud.state_dir)

    async def run() -> T:
        await engine.open()
        try:
            return await engine.read(lambda tx: fn(tx, state))
        finally:
            await engine.close()

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(run(), TIMEOUT_S)
        except TimeoutError:
            raise CliError(
                f"{engine.describe()}: not reachable within {TIMEOUT_S:g}s", UNREACHABLE
            ) from None

    try:
        return asyncio.run(bounded())
    except StorageConfigError as exc:
        raise CliError(str(exc)) from exc
