"""A whole deployment on one machine: two brokers, the cloud and a gateway as real processes.

Used by ``cybernetic demo``, by the end-to-end tests (which kill and restart its parts) and by
the ingest benchmark. The gateway and the cloud run as subprocesses of the installed
``cybernetic`` command with generated configuration files, exactly as systemd would run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from amcp.crypto.pki import FleetCA, write_secret_file
from amcp.runtime.database import connect
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from cloud.enrolment import Enrolment, disconnect_client, init_pki, open_enrolment
from cloud.readings import count_readings, reading_keys
from cybernetic.mosquitto import MosquittoBroker, TlsListener, free_port
from gateway.enrol import EnrolmentState, EnrolPaths, enrol, renew

T = TypeVar("T")


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


@dataclass(frozen=True)
class CloudEvent:
    """One gateway event as the cloud stored it (a pattern alert, an S2 detection ...)."""

    id: int
    gateway: str
    name: str
    source: str
    severity: str
    ts_ms: int
    attrs: dict[str, Any]


class Stack:
    def __init__(
        self,
        state: Path,
        *,
        gateway_id: str = "gw-1",
        gateway: dict[str, Any] | None = None,
        cloud: dict[str, Any] | None = None,
        tls: bool = False,
    ) -> None:
        """``tls=True``: the gateway enrols with the fleet CA when the brokers start and
        reaches the cloud broker over mutual TLS with its certificate (docs/trust.md)."""
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        self.gateway_id = gateway_id
        self.tls = tls
        self.pki_dir = state / "pki"
        self.enrol_dir = state / "gateway-enrolment"
        self.edge = MosquittoBroker(state / "edge-broker")
        self.cloud_broker = (
            MosquittoBroker(state / "cloud-broker", tls=self._init_pki(), acl="acl-cloud")
            if tls
            else MosquittoBroker(state / "cloud-broker")
        )
        secrets = state / "secrets"
        secrets.mkdir(mode=0o700, exist_ok=True)
        self._secret_files: dict[str, Path] = {}
        for broker, user, name in (
            (self.edge, "gateway", "edge-gateway"),
            (self.cloud_broker, "gateway", "cloud-gateway"),
            (self.cloud_broker, "cloud", "cloud-cloud"),
        ):
            if tls and name == "cloud-gateway":
                continue  # with TLS the gateway's certificate is its only cloud credential
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
        if tls:  # enrolment makes the link secret; the password account is for enrolment only
            self.links_dir = self.pki_dir / "links"
            self._secret_files["link"] = EnrolPaths(self.enrol_dir).link_secret
            self.cloud_broker.add_user("enrol", os.urandom(16).hex())
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
                    "password_file": str(self._secret_files.get("cloud-gateway", "")),
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
        if self.tls:
            paths = EnrolPaths(self.enrol_dir)
            gw["uplink"]["broker"] = {  # type: ignore[index]
                "port": self.cloud_broker.tls_port,
                "ca_file": str(paths.trust_bundle),
                "cert_file": str(paths.client_pem),
            }
            gw["uplink"]["enrol_dir"] = str(self.enrol_dir)  # type: ignore[index]
            cl["enrolment"] = {"pki_dir": str(self.pki_dir)}  # renewals go to the daemon
        self.gateway_config.write_text(tomli_w.dumps(_merge(gw, self._gateway_extra)))
        self.cloud_config.write_text(tomli_w.dumps(_merge(cl, self._cloud_extra)))

    @property
    def cloud_db(self) -> Path:
        return self.state / "cloud" / "readings.sqlite3"

    @property
    def outbox_db(self) -> Path:
        return self.state / "gateway" / "outbox.sqlite3"

    @property
    def device_port(self) -> int:
        """Where devices log in on the edge broker (its device listener)."""
        port = self.edge.device_port
        if port is None:
            raise RuntimeError("the edge broker has no device listener")
        return port

    def add_device(self, name: str) -> str:
        """A device account on the edge broker (it logs in on ``edge.device_port``)."""
        password = os.urandom(12).hex()
        self.edge.add_device(name, password)
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
        if self.tls and not EnrolPaths(self.enrol_dir).state.exists():
            self.enrol_gateway()

    def start_cloud(self) -> None:
        self.cloud_proc = self._spawn("cloud", self.cloud_config)

    def start_gateway(self) -> None:
        self.gateway_proc = self._spawn("gateway", self.gateway_config)

    def start(self) -> None:
        self.start_brokers()
        self.start_cloud()
        self.wait_cloud_ready()
        self.start_gateway()

    def wait_cloud_ready(self, timeout: float = 30.0) -> None:
        """Wait until cloud ingest is subscribed. Its session is persistent, but before the
        very first subscription a batch finds no session to wait in and is re-sent only after
        the gateway's ack timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cloud_proc is not None and self.cloud_proc.poll() is not None:
                raise RuntimeError(f"cloud exited: {self.log('cloud')[-3000:]}")
            if scrape(self.cloud_metrics, 0.5).get("cybernetic_cloud_ingest_connected") == 1:
                return
            time.sleep(0.1)
        raise TimeoutError(f"cloud not ready in {timeout}s: {self.log('cloud')[-3000:]}")

    def wait_gateway_ready(self, timeout: float = 20.0) -> None:
        """Wait until the gateway's ingest is subscribed: readings published before its first
        subscription would find no session to wait in."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gateway_proc is not None and self.gateway_proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log('gateway')[-3000:]}")
            if scrape(self.gateway_metrics, 0.5).get("cybernetic_ingest_connected") == 1:
                return
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready in {timeout}s: {self.log('gateway')[-3000:]}")

    def log(self, kind: str) -> str:
        path = self.state / f"{kind}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def stop_process(
        proc: subprocess.Popen[bytes] | None, sig: int, timeout: float = 20.0
    ) -> int | None:
        """Signal a daemon's process group, wait, SIGKILL it past ``timeout``; its exit code."""
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
        return self.stop_process(self.gateway_proc, signal.SIGTERM)

    def kill_gateway(self) -> None:
        self.stop_process(self.gateway_proc, signal.SIGKILL)

    def stop_cloud(self) -> int | None:
        return self.stop_process(self.cloud_proc, signal.SIGTERM)

    def kill_cloud(self) -> None:
        self.stop_process(self.cloud_proc, signal.SIGKILL)

    def close(self) -> None:
        self.stop_gateway()
        self.stop_cloud()
        self.edge.stop()
        self.cloud_broker.stop()

    def __enter__(self) -> Stack:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- trust (tls=True) ----------------------------------------------------------------
    def _init_pki(self) -> TlsListener:
        """The fleet CA and the cloud broker's server certificate (kept across restarts)."""
        ca = FleetCA(self.pki_dir / "ca")
        if not ca.exists():
            init_pki(self.pki_dir)
        tls_dir = self.state / "cloud-broker-tls"
        if not (tls_dir / "server.pem").exists():
            key, cert = ca.issue_server(["127.0.0.1", "localhost"], valid_s=365 * 86400.0)
            write_secret_file(tls_dir / "server.key", key)
            write_secret_file(tls_dir / "server.pem", cert)
        return TlsListener(
            cafile=ca.cert_path,
            certfile=tls_dir / "server.pem",
            keyfile=tls_dir / "server.key",
            crlfile=ca.crl_path,
        )

    def _cloud_link(self) -> BrokerLink:
        return BrokerLink(
            port=self.cloud_broker.port,
            username="cloud",
            password_file=str(self._secret_files["cloud-cloud"]),
        )

    def _run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on a private loop in a thread: callers may be inside a loop."""
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, work()).result()  # type: ignore[arg-type]

    def _with_enrolment(self, work: Callable[[Enrolment], Awaitable[T]]) -> T:
        """Run ``work`` while the cloud's enrolment service answers on the cloud broker."""

        async def run() -> T:
            enrolment = open_enrolment(self.pki_dir)
            ctx = ChildContext("enrolment")
            task = asyncio.create_task(enrolment.serve(self._cloud_link(), ctx))
            try:
                async with asyncio.timeout(10):
                    await ctx.wait_ready()
                return await work(enrolment)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                enrolment.store.close()

        return self._run(run)

    def enrol_gateway(self) -> EnrolmentState:
        """Issue a one-time token and enrol the gateway with it, as an operator would."""
        link = BrokerLink(
            port=self.cloud_broker.port,
            username="enrol",
            password=self.cloud_broker.password("enrol"),
        )

        async def work(enrolment: Enrolment) -> EnrolmentState:
            token = enrolment.issue_token(expires_s=300, gateway=self.gateway_id)
            return await enrol(link, token.text(), self.gateway_id, self.enrol_dir)

        return self._with_enrolment(work)

    def renew_gateway(
        self, *, certificate: bool = True, link_secret: bool = False
    ) -> EnrolmentState:
        """Renew over the mutual-TLS link; the running gateway uses a new certificate from
        its next connection (a new link secret needs the daemons to re-read it)."""
        base = BrokerLink(port=self.cloud_broker.tls_port or 0)
        link = EnrolPaths(self.enrol_dir).tls_link(base)

        async def work(_: Enrolment) -> EnrolmentState:
            return await renew(
                link, self.enrol_dir, certificate=certificate, link_secret=link_secret
            )

        return self._with_enrolment(work)

    def kick_gateway(self) -> None:
        """Close the gateway's live cloud session (it reconnects, or cannot if revoked)."""
        self._run(lambda: disconnect_client(self._cloud_link(), f"{self.gateway_id}-uplink"))

    def revoke_gateway(self) -> list[int]:
        """Revoke the gateway: CRL (broker reloaded), register, link secret; and close its
        live session so it has to reconnect with the revoked certificate."""
        enrolment = open_enrolment(self.pki_dir)
        try:
            serials = enrolment.revoke(self.gateway_id)
        finally:
            enrolment.store.close()
        self.cloud_broker.reload()
        self.kick_gateway()
        return serials

    # -- observation --------------------------------------------------------------------
    def cloud_count(self) -> int:
        return count_readings(self.cloud_db)

    def cloud_keys(self) -> list[tuple[str, str, int]]:
        return reading_keys(self.cloud_db)

    def cloud_events(self, after: int = 0, limit: int = 1000) -> list[CloudEvent]:
        """Events the cloud stored with an id above ``after``, oldest first ([] before the
        cloud made its store). Read-only, beside the running cloud."""
        if not self.cloud_db.exists():
            return []
        with contextlib.closing(connect(self.cloud_db, readonly=True)) as db:
            try:
                rows = db.execute(
                    "SELECT id, gateway, name, source, severity, ts_ms, attrs FROM events"
                    " WHERE id > ? ORDER BY id LIMIT ?",
                    (after, limit),
                ).fetchall()
            except sqlite3.OperationalError:  # no events table yet
                return []
        return [
            CloudEvent(id_, gateway, name, source, severity, ts_ms, json.loads(attrs))
            for id_, gateway, name, source, severity, ts_ms, attrs in rows
        ]

    def wait_cloud_count(self, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        count = self.cloud_count()
        while count < n and time.monotonic() < deadline:
            time.sleep(0.2)
            count = self.cloud_count()
        return count
