"""PostgreSQL for tests and benchmarks: the local server when it answers, else a private cluster.

:func:`admin_dsn` finds a server this process may create databases on: the one on
127.0.0.1:5432 (Debian's ``postgresql``, which ``make test`` installs and starts when missing)
when it lets us in as ``postgres``, otherwise a private cluster in a temporary folder.
:class:`PostgresCluster` is such a private cluster (``initdb``, ``pg_ctl``; trust auth on
loopback, its socket in its own folder): tests that restart or kill the server, or that need a
second server as a standby, start their own so no other test sees the outage.
:func:`scratch_database` makes a database with a unique name and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import psycopg

from cybernetic.mosquitto import free_port

LOCAL_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


class PostgresError(RuntimeError):
    """A private cluster could not be made or did not come up."""


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise PostgresError(
            f"{name} not found: install PostgreSQL (sudo apt-get install postgresql)"
        )
    return str(candidates[-1])


def answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class PostgresCluster:
    """A private PostgreSQL server on a free loopback port, its data in a new temporary folder
    (one the ``postgres`` account can reach when we run as root), removed on exit."""

    def __init__(self, port: int | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cybernetic-pg-"))
        self.data = self.root / "data"
        self.port = port or free_port()
        self._user: str | None = "postgres" if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=3"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._user is not None:  # the server refuses to run as root
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)  # noqa: S603

    def init(self) -> PostgresCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        done = self._run(
            _bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        if done.returncode:
            raise PostgresError(f"initdb failed: {done.stderr.strip()[-500:]}")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = on\nsynchronous_commit = on\nmax_connections = 100\n"
                "shared_buffers = 64MB\n"
            )
        return self

    def start(self) -> None:
        done = self._run(
            _bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "start"
        )
        if done.returncode:
            log = (self.root / "log").read_text(errors="replace")[-800:]
            raise PostgresError(f"pg_ctl start failed: {done.stderr.strip()} {log}")

    def stop(self, mode: str = "fast") -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster (its children then exit): a crash, not a shutdown."""
        pid_file = self.data / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # dead (a zombie at most, which the lock checks would take for alive): its locks go
        for stale in (pid_file, self.root / f".s.PGSQL.{self.port}.lock"):
            stale.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        if not (self.data / "PG_VERSION").exists():
            self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def admin_dsn() -> Iterator[str]:
    """A DSN on which databases may be created: the local server, or a private cluster made
    for the duration of the block."""
    if answers(LOCAL_DSN):
        yield LOCAL_DSN
        return
    with PostgresCluster() as cluster:
        yield cluster.dsn


def with_dbname(dsn: str, dbname: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    parts["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})


@contextlib.contextmanager
def scratch_database(admin: str, prefix: str = "cybernetic") -> Iterator[str]:
    """A new, empty database on ``admin``'s server, dropped (with its connections) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_dbname(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
