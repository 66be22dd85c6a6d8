"""``[storage]``: which engine holds the cloud's data, and the engine for those settings.

A DSN never sits in the configuration file with a password in it: ``dsn`` names host, port,
database and user, and libpq takes the password from ``PGPASSWORD`` or a password file
(``passfile=`` in the DSN, or ``~/.pgpass``); or the whole DSN comes from the environment
variable ``dsn_env`` names (a systemd ``EnvironmentFile=``, mode 0600). Documented in
docs/configuration.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from prometheus_client import CollectorRegistry

from cloud.storage.engine import Engine, OnOpen, StorageConfigError
from cloud.storage.upkeep import RetentionSettings


class StorageSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    engine: Literal["sqlite", "postgresql"] = "sqlite"
    path: str = ""
    """SQLite: the store file; empty: ``readings.sqlite3`` in ``[cloud] state_dir``."""
    dsn: str = ""
    """PostgreSQL: a libpq connection string without the password, e.g.
    ``host=db1 port=5432 dbname=cybernetic user=cloud``; empty: from ``dsn_env``."""
    dsn_env: str = "CYBERNETIC_STORAGE_DSN"
    """The environment variable holding the DSN when ``dsn`` is empty."""
    standby_dsn: str = ""
    """A second server that takes over when the primary cannot be reached (a promoted
    replica); empty: from ``standby_dsn_env``, or none."""
    standby_dsn_env: str = "CYBERNETIC_STORAGE_STANDBY_DSN"
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    """Connections (and threads) for transactions on PostgreSQL."""
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    """How long a transaction waits for a connection before it counts the server as down."""
    retry_max_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    """The longest wait between attempts while the server is down."""
    migrate: Literal["auto", "check"] = "auto"
    """``auto``: bring the schema up to date at start; ``check``: refuse to start while steps
    are pending (an operator runs ``cybernetic cloud migrate``)."""
    rollup_every_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    """How often minute and hour rollups are brought up to date."""
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)

    def __post_init__(self) -> None:
        if self.engine == "sqlite" and (self.dsn or self.standby_dsn):
            raise ValueError('dsn and standby_dsn need engine = "postgresql"')
        for value in (self.dsn, self.standby_dsn):
            if "password" in value.lower():
                raise ValueError(
                    "a DSN in the configuration file must not hold a password: use PGPASSWORD, "
                    "a passfile, or the DSN from the environment (dsn_env)"
                )


def dsns(settings: StorageSettings, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The primary and standby DSN (the standby may be empty)."""
    env = os.environ if environ is None else environ
    primary = settings.dsn or env.get(settings.dsn_env, "")
    if not primary:
        raise StorageConfigError(
            f'[storage] engine = "postgresql" needs a DSN: set [storage] dsn, or the '
            f"environment variable {settings.dsn_env}"
        )
    return primary, settings.standby_dsn or env.get(settings.standby_dsn_env, "")


def engine_for(
    settings: StorageSettings,
    state_dir: Path,
    *,
    registry: CollectorRegistry | None = None,
    on_open: OnOpen | None = None,
) -> Engine:
    """The engine ``settings`` name (not opened yet). ``on_open`` overrides ``[storage]
    migrate`` (``cybernetic cloud migrate`` opens without migrating to list what is due)."""
    auto: OnOpen = on_open or ("migrate" if settings.migrate == "auto" else "check")
    if settings.engine == "sqlite":
        from cloud.storage.sqlite import SqliteEngine  # noqa: PLC0415 - each engine its own

        path = Path(settings.path) if settings.path else state_dir / SQLITE_FILE
        return SqliteEngine(path, on_open=auto)
    from cloud.storage.postgres import PostgresEngine  # noqa: PLC0415 - psycopg only when used

    primary, standby = dsns(settings)
    return PostgresEngine(
        primary,
        standby_dsn=standby,
        pool_size=settings.pool_size,
        connect_timeout_s=settings.connect_timeout_s,
        retry_max_s=settings.retry_max_s,
        on_open=auto,
        registry=registry,
    )


SQLITE_FILE = "readings.sqlite3"
