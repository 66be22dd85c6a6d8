"""A whole deployment on one machine: two brokers, the cloud and a gateway as real processes.

Used by ``cybernetic demo``, by the end-to-end tests (which kill and restart its parts) and by
the ingest benchmark. The gateway and the cloud run as subprocesses of the installed
``cybernetic`` command with generated configuration files, exactly as systemd would run them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from cybernetic.mosquitto import MosquittoBroker, free_port


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def scrape(port: int, timeout: float = 2.0) -> dict[str, float]:
    """Every sample of a Prometheus endpoint ({} when unreachable): summed by sample name, and
    also by ``name:label=value`` for each label, e.g. ``x_total:decision=flagged``."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=timeout).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
            for label, value in sample.labels.items():
                key = f"{sample.name}:{label}={value}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


class Stack:
    def __init__(
        self,
        state: Path,
        *,
        gateway_id: str = "gw-1",
        gateway: dict[str, Any] | None = None,
        cloud: dict[str, Any] | None = None,
    ) -> None:
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        self.gateway_id = gateway_id
        self.edge = MosquittoBroker(state / "edge-broker")
        self.cloud_broker = MosquittoBroker(state / "cloud-broker")
        secrets = state / "secrets"
        secrets.mkdir(mode=0o700, exist_ok=True)
        self._secret_files: dict[str, Path] = {}
        for broker, user, name in (
            (self.edge, "gateway", "edge-gateway"),
            (self.cloud_broker, "gateway", "cloud-gateway"),
            (self.cloud_broker, "cloud", "cloud-cloud"),
        ):
            secret = os.urandom(16).hex()
            broker.add_user(user, secret)
            path = secrets / name
            path.write_text(secret)
            path.chmod(0o600)
            self._secret_files[name] = path
        # the link secret both ends derive their envelope keys from (until enrolment)
        link_secret = os.urandom(32).hex()
        links_dir = secrets / "links"
        links_dir.mkdir(mode=0o700, exist_ok=True)
        for path in (secrets / "link", links_dir / gateway_id):
            path.write_text(link_secret)
            path.chmod(0o600)
        self._secret_files["link"] = secrets / "link"
        self.links_dir = links_dir
        self.gateway_metrics = free_port()
        self.cloud_metrics = free_port()
        self.gateway_config = state / "gateway.toml"
        self.cloud_config = state / "cloud.toml"
        self._gateway_extra = gateway or {}
        self._cloud_extra = cloud or {}
        self.gateway_proc: subprocess.Popen[bytes] | None = None
        self.cloud_proc: subprocess.Popen[bytes] | None = None
        self.write_configs()

    # -- configuration ------------------------------------------------------------------
    def write_configs(self) -> None:
        gw = {
            "gateway": {"id": self.gateway_id, "state_dir": str(self.state / "gateway")},
            "local_broker": {
                "port": self.edge.port,
                "username": "gateway",
                "password_file": str(self._secret_files["edge-gateway"]),
            },
            "uplink": {
                "link_secret_file": str(self._secret_files["link"]),
                "broker": {
                    "port": self.cloud_broker.port,
                    "username": "gateway",
                    "password_file": str(self._secret_files["cloud-gateway"]),
                },
            },
            "metrics": {"listen": f"127.0.0.1:{self.gateway_metrics}"},
        }
        cl = {
            "cloud": {"state_dir": str(self.state / "cloud")},
            "links": {"secrets_dir": str(self.links_dir)},
            "broker": {
                "port": self.cloud_broker.port,
                "username": "cloud",
                "password_file": str(self._secret_files["cloud-cloud"]),
            },
            "metrics": {"listen": f"127.0.0.1:{self.cloud_metrics}"},
        }
        self.gateway_config.write_text(tomli_w.dumps(_merge(gw, self._gateway_extra)))
        self.cloud_config.write_text(tomli_w.dumps(_merge(cl, self._cloud_extra)))

    @property
    def cloud_db(self) -> Path:
        return self.state / "cloud" / "readings.sqlite3"

    @property
    def outbox_db(self) -> Path:
        return self.state / "gateway" / "outbox.sqlite3"

    def add_device(self, name: str) -> str:
        password = os.urandom(12).hex()
        self.edge.add_user(name, password)
        return password

    # -- processes ----------------------------------------------------------------------
    def _spawn(self, kind: str, config: Path) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CYBERNETIC__")}
        log = (self.state / f"{kind}.log").open("ab")
        with log:
            return subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "cybernetic", kind, "run", "-c", str(config)],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def start_brokers(self) -> None:
        self.edge.start()
        self.cloud_broker.start()

    def start_cloud(self) -> None:
        self.cloud_proc = self._spawn("cloud", self.cloud_config)

    def start_gateway(self) -> None:
        self.gateway_proc = self._spawn("gateway", self.gateway_config)

    def start(self) -> None:
        self.start_brokers()
        self.start_cloud()
        self.start_gateway()

    def wait_gateway_ready(self, timeout: float = 20.0) -> None:
        """Wait until the gateway's ingest session is subscribed (it serves metrics then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gateway_proc is not None and self.gateway_proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log('gateway')[-3000:]}")
            if "cybernetic_uplink_connected" in scrape(self.gateway_metrics, 0.5):
                return
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready in {timeout}s: {self.log('gateway')[-3000:]}")

    def log(self, kind: str) -> str:
        path = self.state / f"{kind}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float = 20.0) -> int | None:
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def stop_gateway(self) -> int | None:
        return self._stop(self.gateway_proc, signal.SIGTERM)

    def kill_gateway(self) -> None:
        self._stop(self.gateway_proc, signal.SIGKILL)

    def stop_cloud(self) -> int | None:
        return self._stop(self.cloud_proc, signal.SIGTERM)

    def close(self) -> None:
        self.stop_gateway()
        self.stop_cloud()
        self.edge.stop()
        self.cloud_broker.stop()

    def __enter__(self) -> Stack:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observation --------------------------------------------------------------------
    def cloud_count(self) -> int:
        if not self.cloud_db.exists():
            return 0
        with contextlib.closing(sqlite3.connect(self.cloud_db, timeout=10)) as db:
            try:
                return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    def cloud_keys(self) -> list[tuple[str, str, int]]:
        with contextlib.closing(sqlite3.connect(self.cloud_db, timeout=10)) as db:
            return db.execute("SELECT device, boot, seq FROM readings").fetchall()

    def wait_cloud_count(self, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        count = self.cloud_count()
        while count < n and time.monotonic() < deadline:
            time.sleep(0.2)
            count = self.cloud_count()
        return count
