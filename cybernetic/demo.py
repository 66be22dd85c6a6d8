"""`cybernetic demo`: the product on an embedded default, on one machine.

A :class:`~cybernetic.stack.Stack` (the gateway's local broker, the cloud broker, the cloud
and gateway daemons as real processes) plus simulated devices publishing telemetry under their
own credentials. Every two seconds it prints what is flowing. It stops after ``--duration``
seconds or on Ctrl-C and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from amcp.wire import topics
from cybernetic.stack import Stack, scrape
from gateway.s1.responder import DeviceResponder
from gateway.s1.simulated import temperature_handlers

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_CAPABILITY = {
    "name": "temp.sample",
    "device": "sensor-01",
    "action": "sample",
    "description": "stream n temperature samples from sensor-01, then their mean",
    "timeout": 30.0,
    "input_schema": {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 100},
            "interval": {"type": "number", "minimum": 0, "maximum": 5},
        },
    },
}


def _gateway_overrides() -> dict[str, object]:
    overrides: dict[str, object] = {"s1": {"capabilities": [DEMO_CAPABILITY]}}
    policy = EXAMPLES / "policies" / "demo.policy"
    if policy.exists():  # shipped with the source tree
        overrides["policy"] = {"file": str(policy)}
    patterns = EXAMPLES / "patterns" / "demo.toml"
    if patterns.exists():
        overrides["rules"] = {"files": [str(patterns)]}
    return overrides


@dataclass
class DemoOptions:
    duration: float | None = None
    devices: int = 5
    interval: float = 0.5
    state_dir: Path | None = None
    quiet: bool = False


def _say(text: str) -> None:
    print(text, flush=True)


class SimulatedDevice:
    """Publishes temperature and humidity readings with a boot id and a seq."""

    def __init__(self, name: str, password: str, interval: float) -> None:
        self.name = name
        self.password = password
        self.interval = interval
        self.published = 0

    async def run(self, host: str, port: int) -> None:
        """Publish until cancelled; like a real device, reconnect when the broker goes away."""
        boot = f"{self.name}-{int(time.time())}"
        while True:
            try:
                await self._publish(host, port, boot)
            except aiomqtt.MqttError:
                await asyncio.sleep(1.0)

    async def _publish(self, host: str, port: int, boot: str) -> None:
        async with aiomqtt.Client(host, port, username=self.name, password=self.password) as client:
            await self.stream(client, boot)

    async def stream(self, client: aiomqtt.Client, boot: str | None = None) -> None:
        """Publish readings on an open connection until cancelled."""
        boot = boot or f"{self.name}-{int(time.time())}"
        temp = random.uniform(18, 24)
        while True:
            temp += random.uniform(-0.3, 0.3)
            payload = {
                "seq": self.published + 1,
                "boot": boot,
                "ts": int(time.time() * 1000),
                "values": {
                    "temp": round(temp, 2),
                    "humidity": round(random.uniform(30, 60), 1),
                },
            }
            await client.publish(topics.device_telemetry(self.name), json.dumps(payload), qos=1)
            self.published += 1
            await asyncio.sleep(self.interval)


def _account(stack: Stack, devices: list[SimulatedDevice], elapsed: float) -> str:
    g = scrape(stack.gateway_metrics, 1.0)
    c = scrape(stack.cloud_metrics, 1.0)
    return (
        f"[{elapsed:6.1f}s] devices published {sum(d.published for d in devices)}"
        f" | gateway stored {int(g.get('cybernetic_ingest_stored_readings_total', 0))}"
        f", outbox {int(g.get('cybernetic_outbox_rows', 0))} rows"
        f", uplink {'up' if g.get('cybernetic_uplink_connected') else 'down'}"
        f", policy flagged {int(g.get('cybernetic_policy_decisions_total:decision=flagged', 0))}"
        f" | cloud stored {int(c.get('cybernetic_cloud_stored_readings_total', 0))}"
        f", duplicates {int(c.get('cybernetic_cloud_duplicate_readings_total', 0))}"
        f", events {int(c.get('cybernetic_cloud_events_total', 0))}"
    )


async def _send_intent(stack: Stack, started: float) -> None:
    """Once the gateway announced its capabilities, send the demo intent and show its stream."""
    await asyncio.sleep(3)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cybernetic",
        "intent",
        "send",
        "temp.sample",
        "--args",
        '{"n": 4, "interval": 0.4}',
        "-c",
        str(stack.cloud_config),
        "--timeout",
        "20",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C goes to the demo, which ends this child itself
    )
    assert proc.stdout is not None
    _say(f"[{time.monotonic() - started:6.1f}s] intent temp.sample sent to sensor-01's capability")
    try:
        async for line in proc.stdout:
            _say(f"           intent | {line.decode(errors='replace').rstrip()}")
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_demo(opts: DemoOptions) -> int:
    keep = opts.state_dir is not None
    state = opts.state_dir or Path(tempfile.mkdtemp(prefix="cybernetic-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = Stack(state, gateway_id="demo-gw", gateway=_gateway_overrides(), tls=True)
    try:
        devices = [
            SimulatedDevice(name, stack.add_device(name), opts.interval)
            for name in (f"sensor-{i:02d}" for i in range(1, opts.devices + 1))
        ]
        stack.start()
        _say(f"Cybernetic Edge demo: state in {state}")
        edge, cloud = stack.device_port, stack.cloud_broker.tls_port or stack.cloud_broker.port
        _say(
            f"  edge broker 127.0.0.1:{edge}, cloud broker 127.0.0.1:{cloud}"
            " (mutual TLS; the gateway enrolled with a one-time token)"
        )
        _say(
            f"  metrics: gateway http://127.0.0.1:{stack.gateway_metrics}/metrics,"
            f" cloud http://127.0.0.1:{stack.cloud_metrics}/metrics"
        )
        started = time.monotonic()
        deadline = started + opts.duration if opts.duration else None
        responder = DeviceResponder(
            devices[0].name,
            temperature_handlers(),
            host=stack.edge.host,
            port=stack.device_port,
            password=devices[0].password,
        )
        async with asyncio.TaskGroup() as tg:
            # sensor-01 answers commands and publishes on one connection, as a device does
            tasks = [tg.create_task(d.run(stack.edge.host, stack.device_port)) for d in devices[1:]]
            tasks.append(tg.create_task(responder.run(also=devices[0].stream)))
            tasks.append(tg.create_task(_send_intent(stack, started)))
            try:
                while not stop.is_set():
                    left = 2.0 if deadline is None else deadline - time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), max(0.0, min(2.0, left)))
                    if not opts.quiet:
                        _say(
                            await asyncio.to_thread(
                                _account, stack, devices, time.monotonic() - started
                            )
                        )
                    if deadline is not None and time.monotonic() >= deadline:
                        break
            finally:
                for t in tasks:
                    t.cancel()
        _say("demo stopped")
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await asyncio.to_thread(stack.close)
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
