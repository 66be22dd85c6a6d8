"""The field-device bridge on the gateway: OPC-UA and Modbus machines as devices.

A supervised child of the gateway (``bridge``, started when ``[bridge]`` lists devices). Each
configured machine runs in a :class:`firmware_bridge.runner.DeviceRunner`; its samples are
published to the local broker as that device's telemetry (``devices/{id}/telemetry``, QoS 1),
so they take **the same ingest path** as an MQTT device's readings: identity, validation, S2,
policy, rules, outbox, uplink. Each reading carries a boot id (new at every bridge start) and
a seq (one per reading), so the dedup layer recognises a redelivered one.

Commands reach a machine the way they reach any device: S1 publishes
``devices/{id}/commands/{cid}`` after taking the device's S2 lease, the bridge carries the
command out (a write, a method call) and answers on ``devices/{id}/responses/{cid}``.

Health: while a machine is connected the bridge sends its health (reads ok, errors, latency)
as a reading every ``health_interval``; that and its values are S2's heartbeats of the device.
An unreachable machine sends nothing, so S2 declares it a zombie: a degraded device, never a
failed gateway (the runner reconnects on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.service import Service
from amcp.runtime.session import Link, Session, SessionSpec, Transport
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext, ChildSpec, Strategy, Supervisor
from amcp.wire import topics
from firmware_bridge.adapter import Health, Sample, build, now_ms
from firmware_bridge.errors import BridgeError
from firmware_bridge.runner import DeviceRunner
from firmware_bridge.settings import BridgeSettings, Device
from gateway.s1.devicewire import COMMAND_DECODER, ENCODER, DeviceCommand, DeviceReply

log = logging.getLogger(__name__)
QUEUE_MAX = 10_000
"""Readings waiting for the local broker; when full, the machines' reads wait (back pressure)."""


class BridgeCollector(Collector):
    """The bridge's figures on the gateway's /metrics (per machine: up, reads, errors, latency)."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def collect(self) -> Any:
        b = self.bridge
        sent = CounterMetricFamily(
            "cybernetic_bridge_readings", "Machine readings the bridge published to ingest"
        )
        sent.add_metric([], b.published)
        yield sent
        up = GaugeMetricFamily(
            "cybernetic_bridge_device_up", "1 while connected", labels=["device"]
        )
        reads = CounterMetricFamily("cybernetic_bridge_reads", "Good reads", labels=["device"])
        errors = CounterMetricFamily(
            "cybernetic_bridge_errors", "Failed reads and links", labels=["device", "kind"]
        )
        latency = GaugeMetricFamily(
            "cybernetic_bridge_latency_ms", "Smoothed request latency", labels=["device"]
        )
        for device, h in b.health.items():
            up.add_metric([device], float(h.connected))
            reads.add_metric([device], h.reads_ok)
            latency.add_metric([device], h.latency_ms)
            for kind, n in h.errors_by_kind.items():
                errors.add_metric([device, kind], n)
        yield from (up, reads, errors, latency)


class Bridge:
    def __init__(
        self,
        settings: BridgeSettings,
        broker: BrokerLink,
        *,
        client_id: str,
        transport: Transport | None = None,
        devices: list[Device] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.devices = devices if devices is not None else settings.parsed()
        self.health: dict[str, Health] = {d.id: Health() for d in self.devices}
        self.runners = {
            d.id: DeviceRunner(
                build(d, self.health[d.id]),
                self._emit,
                initial=settings.reconnect_initial,
                maximum=settings.reconnect_max,
            )
            for d in self.devices
        }
        self.boot_id = "br-" + uuid.uuid4().hex[:12]
        self._seq: dict[str, int] = dict.fromkeys(self.runners, 0)
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_MAX)
        self.published = 0
        self.session = Session(
            transport or MqttTransport(),
            broker,
            SessionSpec(client_id, tuple(topics.device_commands_filter(d) for d in self.runners)),
            name="bridge",
        )
        if registry is not None:
            registry.register(BridgeCollector(self))

    def _reading(self, device: str, values: dict[str, Any], ts_ms: int) -> bytes:
        seq = self._seq[device] = self._seq[device] + 1
        body = {"boot": self.boot_id, "seq": seq, "ts": ts_ms, "values": values}
        return msgspec.json.encode(body)

    async def _emit(self, device: str, sample: Sample) -> None:
        await self.queue.put((device, self._reading(device, sample.values, sample.ts_ms)))

    async def serve(self) -> int:
        """Alone in a process (``[bridge] process = "separate"``, ``cybernetic bridge run``):
        one supervised child, signals and sd_notify as the gateway daemon has them."""
        tree = Supervisor(
            "bridge",
            [ChildSpec("bridge", self.run, wait_ready=True, shutdown_timeout=5)],
            strategy=Strategy.ONE_FOR_ONE,
            intensity=5,
            period=30,
        )

        def line() -> str:
            up = sum(h.connected for h in self.health.values())
            return f"bridge: {up}/{len(self.health)} machines connected, {self.published} sent"

        return await Service(tree, status=line).run()

    def status(self) -> dict[str, Any]:
        return {
            d: {"connected": h.connected, **h.values(), "last_error": h.last_error}
            for d, h in self.health.items()
        }

    async def run(self, ctx: ChildContext) -> None:
        async with asyncio.TaskGroup() as tg:
            for runner in self.runners.values():
                tg.create_task(runner.run(), name=f"bridge-{runner.device}")
            tg.create_task(self._health())
            await self.session.run(self._serve, on_connected=ctx.ready)

    async def _health(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval)
            for device, health in self.health.items():
                if health.connected:
                    with contextlib.suppress(asyncio.QueueFull):
                        self.queue.put_nowait(
                            (device, self._reading(device, health.values(), now_ms()))
                        )

    async def _serve(self, link: Link) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._commands(link, tg))
            while True:
                device, body = await self.queue.get()
                try:
                    await link.publish(topics.device_telemetry(device), body, qos=1)
                except BaseException:
                    # not sent: first in line after the reconnect
                    self._requeue(device, body)
                    raise
                self.published += 1

    def _requeue(self, device: str, body: bytes) -> None:
        rest = []
        while not self.queue.empty():
            rest.append(self.queue.get_nowait())
        self.queue.put_nowait((device, body))
        for item in rest[: QUEUE_MAX - 1]:
            self.queue.put_nowait(item)

    async def _commands(self, link: Link, tg: asyncio.TaskGroup) -> None:
        async for message in link.messages():
            parts = message.topic.split("/")
            runner = self.runners.get(parts[1]) if len(parts) == 4 else None
            if runner is None:
                continue
            try:
                command = COMMAND_DECODER.decode(message.payload)
            except (msgspec.DecodeError, UnicodeDecodeError):
                log.warning("malformed command", extra={"device": runner.device})
                continue
            if not command.cancel:  # a write is one request: nothing to cancel mid-way
                tg.create_task(self._command(link, runner, command))

    async def _command(self, link: Link, runner: DeviceRunner, command: DeviceCommand) -> None:
        topic = topics.response(runner.device, command.id)

        async def send(reply: DeviceReply) -> None:
            await link.publish(topic, ENCODER.encode(reply), qos=1)

        await send(DeviceReply(id=command.id, state="accepted", correlation=command.correlation))
        try:
            data = await runner.command(command.action, dict(command.args))
        except BridgeError as exc:
            reply = DeviceReply(
                id=command.id, state="failed", error=str(exc), correlation=command.correlation
            )
        else:
            reply = DeviceReply(
                id=command.id, state="done", data=data, correlation=command.correlation
            )
        await send(reply)
