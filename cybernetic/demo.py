"""`cybernetic demo`: the product on an embedded default, on one machine.

Starts two private Mosquitto brokers with the shipped configuration (the gateway's local broker
and the cloud broker), a cloud process and a gateway process (the real daemons, as
subprocesses), and simulated devices publishing telemetry under their own credentials. Every
few seconds it prints what is flowing. It stops after ``--duration`` seconds or on Ctrl-C and
leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import httpx
from prometheus_client.parser import text_string_to_metric_families

from cybernetic.mosquitto import MosquittoBroker, free_port

GATEWAY_PASSWORD_ENV = "CYBERNETIC__LOCAL_BROKER__PASSWORD"


@dataclass
class DemoOptions:
    duration: float | None = None
    devices: int = 5
    interval: float = 0.5
    state_dir: Path | None = None
    quiet: bool = False


def _say(text: str) -> None:
    print(text, flush=True)


def _toml_gateway(state: Path, edge: MosquittoBroker, cloud: MosquittoBroker, metrics: int) -> str:
    return f"""\
[gateway]
id = "demo-gw"
state_dir = "{state / "gateway"}"

[local_broker]
host = "{edge.host}"
port = {edge.port}
username = "gateway"
password_file = "{state / "secrets" / "edge-gateway"}"

[uplink.broker]
host = "{cloud.host}"
port = {cloud.port}
username = "gateway"
password_file = "{state / "secrets" / "cloud-gateway"}"

[metrics]
listen = "127.0.0.1:{metrics}"
"""


def _toml_cloud(state: Path, cloud: MosquittoBroker, metrics: int) -> str:
    return f"""\
[cloud]
state_dir = "{state / "cloud"}"

[broker]
host = "{cloud.host}"
port = {cloud.port}
username = "cloud"
password_file = "{state / "secrets" / "cloud-cloud"}"

[metrics]
listen = "127.0.0.1:{metrics}"
"""


def _secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(value)
    path.chmod(0o600)


async def _scrape(client: httpx.AsyncClient, port: int) -> dict[str, float]:
    try:
        r = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


class _Devices:
    """Simulated devices: each publishes temperature and humidity with a seq."""

    def __init__(self, broker: MosquittoBroker, names: list[str], interval: float) -> None:
        self.broker = broker
        self.names = names
        self.interval = interval
        self.published = 0

    async def run_one(self, name: str) -> None:
        boot = f"{name}-{int(time.time())}"
        seq = 0
        temp = random.uniform(18, 24)
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, username=name, password=self.broker.password(name)
        ) as client:
            while True:
                seq += 1
                temp += random.uniform(-0.3, 0.3)
                payload = {
                    "seq": seq,
                    "boot": boot,
                    "ts": int(time.time() * 1000),
                    "values": {
                        "temp": round(temp, 2),
                        "humidity": round(random.uniform(30, 60), 1),
                    },
                }
                await client.publish(f"devices/{name}/telemetry", json.dumps(payload), qos=1)
                self.published += 1
                await asyncio.sleep(self.interval)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for name in self.names:
                tg.create_task(self.run_one(name))


@contextlib.asynccontextmanager
async def _process(
    args: list[str], env: dict[str, str], log: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=out, start_new_session=True)  # noqa: S603
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def run_demo(opts: DemoOptions) -> int:
    keep = opts.state_dir is not None
    state = opts.state_dir or Path(tempfile.mkdtemp(prefix="cybernetic-demo-"))
    state.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    edge = MosquittoBroker(state / "edge-broker")
    cloud = MosquittoBroker(state / "cloud-broker")
    try:
        edge_gw, cloud_gw, cloud_cloud = (os.urandom(12).hex() for _ in range(3))
        edge.add_user("gateway", edge_gw)
        cloud.add_user("gateway", cloud_gw)
        cloud.add_user("cloud", cloud_cloud)
        devices = [f"sensor-{i:02d}" for i in range(1, opts.devices + 1)]
        for name in devices:
            edge.add_user(name, os.urandom(12).hex())
        _secret(state / "secrets" / "edge-gateway", edge_gw)
        _secret(state / "secrets" / "cloud-gateway", cloud_gw)
        _secret(state / "secrets" / "cloud-cloud", cloud_cloud)
        edge.start()
        cloud.start()
        gw_metrics, cloud_metrics = free_port(), free_port()
        (state / "gateway.toml").write_text(_toml_gateway(state, edge, cloud, gw_metrics))
        (state / "cloud.toml").write_text(_toml_cloud(state, cloud, cloud_metrics))
        _say(f"Cybernetic Edge demo: state in {state}")
        _say(f"  edge broker 127.0.0.1:{edge.port}, cloud broker 127.0.0.1:{cloud.port}")
        _say(
            f"  gateway metrics http://127.0.0.1:{gw_metrics}/metrics, cloud metrics :{cloud_metrics}"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CYBERNETIC__")}
        exe = [sys.executable, "-m", "cybernetic"]
        async with (
            _process(
                [*exe, "cloud", "run", "-c", str(state / "cloud.toml")], env, state / "cloud.log"
            ),
            _process(
                [*exe, "gateway", "run", "-c", str(state / "gateway.toml")],
                env,
                state / "gateway.log",
            ),
            httpx.AsyncClient() as http,
        ):
            sim = _Devices(edge, devices, opts.interval)
            sim_task = asyncio.create_task(sim.run())
            started = time.monotonic()
            deadline = started + opts.duration if opts.duration else None
            try:
                while not stop.is_set():
                    timeout = (
                        2.0 if deadline is None else max(0.0, min(2.0, deadline - time.monotonic()))
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout)
                    if sim_task.done():
                        sim_task.result()  # surface a device failure
                    g = await _scrape(http, gw_metrics)
                    c = await _scrape(http, cloud_metrics)
                    if not opts.quiet:
                        _say(
                            f"[{time.monotonic() - started:6.1f}s] devices published {sim.published}"
                            f" | gateway ingested {int(g.get('cybernetic_ingest_stored_readings_total', 0))}"
                            f", outbox {int(g.get('cybernetic_outbox_rows', 0))} rows"
                            f", uplink {'up' if g.get('cybernetic_uplink_connected') else 'down'}"
                            f" | cloud stored {int(c.get('cybernetic_cloud_stored_readings_total', 0))}"
                            f", duplicates {int(c.get('cybernetic_cloud_duplicate_readings_total', 0))}"
                        )
                    if deadline is not None and time.monotonic() >= deadline:
                        break
            finally:
                sim_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await sim_task
        _say("demo stopped")
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        edge.stop()
        cloud.stop()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
