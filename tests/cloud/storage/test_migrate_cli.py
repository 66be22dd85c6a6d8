"""`cybernetic cloud migrate [--dry-run]` and the [storage] settings, as an operator uses them."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import tomli_w

from cloud.config import CloudConfig
from cloud.storage import migrations
from cloud.storage.engine import StorageConfigError
from cloud.storage.settings import StorageSettings, dsns


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cybernetic", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


def _config(tmp_path: Path, storage: dict[str, object]) -> Path:
    path = tmp_path / "cloud.toml"
    path.write_text(
        tomli_w.dumps({"cloud": {"state_dir": str(tmp_path / "state")}, "storage": storage})
    )
    return path


def test_sqlite_dry_run_lists_then_migrate_applies_and_a_second_run_has_nothing(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, {})
    dry = _cli("cloud", "migrate", "--dry-run", "-c", str(config))
    assert dry.returncode == 0, dry.stderr
    assert f"{migrations.VERSION} step(s) pending" in dry.stdout
    assert not (tmp_path / "state" / "readings.sqlite3").exists()  # a dry run writes nothing
    done = _cli("cloud", "-c", str(config), "migrate")  # the flag before the verb works too
    assert done.returncode == 0, done.stderr
    assert "step(s) applied" in done.stdout
    assert "2  schema table" in done.stdout
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "readings.sqlite3")) as db:
        assert db.execute("SELECT max(version) FROM schema_migrations").fetchone() == (
            migrations.VERSION,
        )
    again = _cli("cloud", "migrate", "-c", str(config))
    assert "schema up to date" in again.stdout


def test_postgresql_migrate_takes_the_dsn_from_the_environment(tmp_path: Path, pg_dsn: str) -> None:
    config = _config(tmp_path, {"engine": "postgresql", "dsn_env": "TEST_DSN"})
    env = {**_env(), "TEST_DSN": pg_dsn}
    dry = _cli("cloud", "migrate", "--dry-run", "-c", str(config), env=env)
    assert dry.returncode == 0, dry.stderr
    assert "postgresql:host=" in dry.stdout
    assert f"{migrations.VERSION} step(s) pending" in dry.stdout
    done = _cli("cloud", "migrate", "-c", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert _cli("cloud", "migrate", "-c", str(config), env=env).stdout.endswith("up to date\n")


def test_postgresql_without_a_dsn_is_one_line_naming_what_to_set(tmp_path: Path) -> None:
    config = _config(tmp_path, {"engine": "postgresql", "dsn_env": "NO_SUCH_DSN_VAR"})
    done = _cli("cloud", "migrate", "-c", str(config), env=_env())
    assert done.returncode == 2
    assert "NO_SUCH_DSN_VAR" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    run = _cli("cloud", "run", "-c", str(config), env=_env())
    assert run.returncode == 1
    assert "NO_SUCH_DSN_VAR" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_unreachable_server_is_exit_code_3_within_the_timeout(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        {"engine": "postgresql", "dsn": "host=127.0.0.1 port=9 dbname=x", "retry_max_s": 0.2},
    )
    done = _cli("cloud", "migrate", "--timeout", "2", "-c", str(config), env=_env())
    assert done.returncode == 3, done.stderr
    assert "not reachable" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_password_in_the_configured_dsn_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="must not hold a password"):
        msgspec.convert(
            {"storage": {"engine": "postgresql", "dsn": "host=db password=hunter2"}}, CloudConfig
        )
    with pytest.raises(msgspec.ValidationError, match="need engine"):
        msgspec.convert({"storage": {"dsn": "host=db"}}, CloudConfig)


def test_the_standby_comes_from_its_own_variable() -> None:
    settings = StorageSettings(engine="postgresql")
    env = {"CYBERNETIC_STORAGE_DSN": "host=a", "CYBERNETIC_STORAGE_STANDBY_DSN": "host=b"}
    assert dsns(settings, env) == ("host=a", "host=b")
    with pytest.raises(StorageConfigError):
        dsns(settings, {})


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CYBERNETIC")}
