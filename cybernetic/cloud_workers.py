"""Cloud workers for the scale-out tests and ``cybernetic bench cloud``: a real cloud broker,
``cybernetic cloud run`` worker processes (``[cloud] role = "ingest"``) that share the gateway
uplinks through an MQTT shared subscription, storing into PostgreSQL (the DSN passed in the
environment, as deployed) or one SQLite file; gateways as real outboxes and uplinks in this
process, or as a backlog of signed batches queued in the broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import tomli_w

from amcp.link import GatewayLink
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import SessionSpec, connect_once
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.wire import topics
from amcp.wire.telemetry import Reading, TelemetryBatch
from cybernetic.mosquitto import MosquittoBroker, free_port
from cybernetic.stack import Stack, scrape
from gateway.config import UplinkSettings
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox, OutboxSettings, encode_row
from gateway.uplink import Uplink


class Fleet:
    """Gateways and cloud workers around one cloud broker, storing into PostgreSQL (``dsn``)
    or, with ``dsn=""``, into one SQLite file all workers share."""

    def __init__(self, root: Path, dsn: str = "", *, standby_dsn: str = "") -> None:
        self.root = root
        self.dsn = dsn
        self.standby_dsn = standby_dsn
        self.sqlite_path = root / "readings.sqlite3"
        self.broker = MosquittoBroker(root / "broker")
        self.secrets = root / "secrets"
        self.secrets.mkdir(parents=True, mode=0o700)
        self.links = self.secrets / "links"
        self.links.mkdir(mode=0o700)
        for user in ("cloud", "gateway"):
            password = os.urandom(12).hex()
            self.broker.add_user(user, password)
            path = self.secrets / user
            path.write_text(password)
            path.chmod(0o600)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics: dict[str, int] = {}

    def link(self, user: str) -> BrokerLink:
        return BrokerLink(
            port=self.broker.port,
            username=user,
            password_file=str(self.secrets / user),
            reconnect_initial=0.05,
            reconnect_max=0.5,
        )

    # -- cloud workers ------------------------------------------------------------------
    def start_worker(self, name: str) -> None:
        port = self.metrics.setdefault(name, free_port())
        config = self.root / f"{name}.toml"
        config.write_text(
            tomli_w.dumps(
                {
                    "cloud": {"state_dir": str(self.root / name), "role": "ingest"},
                    "broker": {
                        "port": self.broker.port,
                        "username": "cloud",
                        "password_file": str(self.secrets / "cloud"),
                        "reconnect_initial": 0.05,
                        "reconnect_max": 0.5,
                    },
                    "ingest": {"session": f"cloud-ingest-{name}", "shared_group": "cloud"},
                    "storage": (
                        {"engine": "postgresql", "connect_timeout_s": 1.0, "retry_max_s": 0.5}
                        if self.dsn
                        else {"path": str(self.sqlite_path)}
                    ),
                    "links": {"secrets_dir": str(self.links)},
                    "metrics": {"listen": f"127.0.0.1:{port}"},
                    "log": {"format": "json"},
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CYBERNETIC")}
        if self.dsn:  # the DSN from the environment, as deployed
            env["CYBERNETIC_STORAGE_DSN"] = self.dsn
        if self.standby_dsn:
            env["CYBERNETIC_STORAGE_STANDBY_DSN"] = self.standby_dsn
        with (self.root / f"{name}.log").open("ab") as log:
            self.workers[name] = subprocess.Popen(  # noqa: S603 - our own module
                [sys.executable, "-m", "cybernetic", "cloud", "run", "-c", str(config)],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def worker_ready(self, name: str) -> bool:
        proc = self.workers[name]
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited: {self.log(name)[-3000:]}")
        return scrape(self.metrics[name], 0.5).get("cybernetic_cloud_ingest_connected") == 1

    def stop_worker(self, name: str, sig: int = signal.SIGTERM) -> None:
        Stack.stop_process(self.workers[name], sig)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)
        self.broker.stop()

    # -- gateways -----------------------------------------------------------------------
    def add_gateway(self, gateway_id: str) -> bytes:
        """A gateway's link secret, known to the workers."""
        secret = os.urandom(32)
        path = self.links / gateway_id
        path.write_text(secret.hex())
        path.chmod(0o600)
        return secret

    async def queue_backlog(
        self, gateway_id: str, readings: list[Reading], batch: int, state: Path
    ) -> None:
        """Publish ``readings`` as signed batches of ``batch``, as a gateway coming back
        online does; they wait in the workers' persistent sessions."""
        link = GatewayLink(gateway_id, self.add_gateway(gateway_id), state / f"{gateway_id}.rp")
        topic = topics.telemetry(topics.DEFAULT_PREFIX, gateway_id)
        try:
            async with connect_once(
                MqttTransport(), self.link("gateway"), SessionSpec(f"backlog-{gateway_id}", ())
            ) as conn:
                for i in range(0, len(readings), batch):
                    body = TelemetryBatch(f"{gateway_id}-{i}", gateway_id, readings[i : i + batch])
                    await conn.publish(topic, link.seal(body, topic), qos=1)
        finally:
            link.close()

    @contextlib.asynccontextmanager
    async def gateway(self, gateway_id: str, root: Path) -> AsyncIterator[Outbox]:
        """A gateway's outbox and its real uplink to the cloud broker, running."""
        secret = self.add_gateway(gateway_id)
        path = self.links / gateway_id
        outbox = Outbox(root / f"{gateway_id}-outbox.sqlite3", OutboxSettings())
        await outbox.open()
        link = GatewayLink(gateway_id, secret, root / f"{gateway_id}-replay.sqlite3")
        uplink = Uplink(
            UplinkSettings(
                broker=self.link("gateway"),
                link_secret_file=str(path),
                batch_max=100,
                ack_timeout=2.0,
            ),
            outbox,
            GatewayMetrics(),
            link,
            gateway=gateway_id,
            transport=MqttTransport(),
        )
        task = asyncio.create_task(uplink.run(ChildContext(f"uplink-{gateway_id}")))
        try:
            yield outbox
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await outbox.close()
            link.close()


async def fill(outbox: Outbox, device: str, seqs: range) -> None:
    now = int(time.time() * 1000)
    bodies = [encode_row(Reading(device, "b1", s, now + s, {"v": s}, now)) for s in seqs]
    await outbox.append_readings(bodies)


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


def stored(dsn: str) -> list[tuple[str, str, int]]:
    """Every reading's identity in the database (empty before the schema exists)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
        if conn.execute("SELECT to_regclass('readings')").fetchone() == (None,):
            return []
        return [tuple(r) for r in conn.execute("SELECT device, boot, seq FROM readings")]
