"""Field-device bridge: values per second from a simulated machine into the outbox, against a
bare library client on the same server in the same run.

OPC-UA: a server (its own process) changes ``--variables`` Double variables every
``--update-ms``; ``raw_opcua_values_per_s`` is what a bare asyncua subscription receives,
``opcua_values_per_s`` what the bridge delivers through Mosquitto, ingest and the outbox
commit (values of stored readings). Modbus: a pymodbus TCP server (its own process);
``raw`` reads ``--registers`` holding registers back to back with a bare pymodbus client, the
bridge polls the same block as one group and its values are counted in the outbox. The
bridge runs in a process of its own (ingest and the outbox in this one), so polling and ingest
do not share a core. The ratios are bridge / bare; targets 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cybernetic.bench import progress

DESCRIPTION = "OPC-UA and Modbus values/s through the bridge into the outbox vs bare clients"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--variables", type=int, default=100, help="OPC-UA variables")
    parser.add_argument("--update-ms", type=float, default=20.0, help="server update period")
    parser.add_argument("--registers", type=int, default=100, help="Modbus registers per read")


# -- the servers, each in its own process ----------------------------------------------------
def _opcua_server(port: int, variables: int, update_ms: float, ready: Any) -> None:
    from asyncua import ua  # noqa: PLC0415
    from asyncua.server.server import Server  # noqa: PLC0415

    async def main() -> None:
        s = Server()
        await s.init()
        s.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench")
        ns = await s.register_namespace("urn:bench")
        obj = await s.nodes.objects.add_object(f"ns={ns};s=Bench", "Bench")
        nodes = [await obj.add_variable(f"ns={ns};s=v{i}", f"v{i}", 0.0) for i in range(variables)]
        async with s:
            ready.set()
            n = 0
            while True:
                n += 1
                for node in nodes:
                    await s.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(float(n))))
                await asyncio.sleep(update_ms / 1000)

    asyncio.run(main())


def _modbus_server(port: int, ready: Any) -> None:
    from firmware_bridge.simulated import modbus_tcp  # noqa: PLC0415

    async def main() -> None:
        server = modbus_tcp(port)
        await server.serve_forever(background=True)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _bridge_process(devices: list[dict[str, Any]], port: int, ready: Any) -> None:
    """The bridge alone in a process (publishing to the benchmark's broker)."""
    from amcp.runtime.settings import BrokerLink  # noqa: PLC0415
    from amcp.runtime.supervisor import ChildContext  # noqa: PLC0415
    from firmware_bridge.settings import BridgeSettings  # noqa: PLC0415
    from gateway.bridge import Bridge  # noqa: PLC0415

    async def main() -> None:
        link = BrokerLink(port=port, username="gateway", password="bench-secret")
        bridge = Bridge(BridgeSettings(devices=devices), link, client_id="bench-bridge")
        ctx = ChildContext("bridge")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(bridge.run(ctx))
            await ctx.wait_ready()
            ready.set()

    asyncio.run(main())


@contextlib.contextmanager
def _process(target: Any, *args: Any) -> Any:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("benchmark server did not start")
        yield
    finally:
        proc.terminate()
        proc.join(5)


# -- bare clients ------------------------------------------------------------------------------
async def _raw_opcua(endpoint: str, variables: int, seconds: float) -> float:
    from asyncua import ua  # noqa: PLC0415
    from asyncua.client.client import Client  # noqa: PLC0415
    from asyncua.common.node import Node  # noqa: PLC0415

    async with Client(endpoint) as client:
        ns = await client.get_namespace_index("urn:bench")
        sub = await client.create_subscription(10, queue_maxsize=100_000)
        nodes: list[Node] = [client.get_node(f"ns={ns};s=v{i}") for i in range(variables)]
        await sub.subscribe_data_change(nodes, sampling_interval=ua.Double(0.0))
        count = 0
        await asyncio.sleep(0.5)  # the initial values
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            event = await sub.next_event(timeout=max(0.01, seconds - elapsed))
            if event is not None:
                count += 1
        await sub.delete()
        return count / seconds


async def _raw_modbus(port: int, registers: int, seconds: float) -> float:
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        reply = await client.read_holding_registers(0, count=registers, device_id=1)
        count += len(reply.registers)
    client.close()
    return count / seconds


# -- through the bridge, ingest and the outbox -------------------------------------------------
async def _through_bridge(devices: list[dict[str, Any]], seconds: float, state: Path) -> float:
    from amcp.runtime.settings import BrokerLink  # noqa: PLC0415
    from amcp.runtime.supervisor import ChildContext  # noqa: PLC0415
    from amcp.wire.telemetry import Reading  # noqa: PLC0415
    from cybernetic.mosquitto import MosquittoBroker  # noqa: PLC0415
    from gateway.config import IngestSettings  # noqa: PLC0415
    from gateway.ingest import Ingest  # noqa: PLC0415
    from gateway.metrics import GatewayMetrics  # noqa: PLC0415
    from gateway.outbox import Outbox, OutboxSettings  # noqa: PLC0415

    stored = [0]
    counting = [False]

    def count(readings: list[Reading]) -> None:
        if counting[0]:
            stored[0] += sum(len(r.values) for r in readings if "bridge.reads_ok" not in r.values)

    broker = MosquittoBroker(state / "mosquitto")
    broker.add_user("gateway", "bench-secret")
    broker.start()
    try:
        link = BrokerLink(port=broker.port, username="gateway", password="bench-secret")
        outbox = Outbox(state / "outbox.sqlite3", OutboxSettings())
        await outbox.open()
        ingest = Ingest(
            IngestSettings(), outbox, GatewayMetrics(), broker=link, client_id="bench-ingest",
            observers=[count],
        )  # fmt: skip
        async with asyncio.TaskGroup() as tg:
            ictx = ChildContext("ingest")
            task = tg.create_task(ingest.run(ictx))
            await ictx.wait_ready()
            with _process(_bridge_process, devices, broker.port):
                await asyncio.sleep(1.0)  # connected, initial values through
                counting[0] = True
                await asyncio.sleep(seconds)
                counting[0] = False
            task.cancel()
        await outbox.close()
    finally:
        broker.stop()
    return stored[0] / seconds


def _median(label: str, runs: int, measure: Any) -> float:
    values = []
    for i in range(runs):
        v = asyncio.run(measure())
        progress(f"{label} run {i + 1}/{runs}: {v:,.0f}/s")
        values.append(v)
    return float(statistics.median(values))


def run(args: argparse.Namespace) -> dict[str, object]:
    from cybernetic.mosquitto import free_port  # noqa: PLC0415

    state = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    ua_port, mb_port = free_port(), free_port()
    endpoint = f"opc.tcp://127.0.0.1:{ua_port}/bench"
    with _process(_opcua_server, ua_port, args.variables, args.update_ms):
        raw_ua = _median(
            "raw asyncua", args.runs, lambda: _raw_opcua(endpoint, args.variables, args.seconds)
        )
        ua_device = {
            "protocol": "opcua",
            "id": "bench-opcua",
            "endpoint": endpoint,
            "publish_ms": 10,
            "points": [
                {"name": f"v{i}", "node": f"ns=2;s=v{i}", "sampling_ms": 0}
                for i in range(args.variables)
            ],
        }
        runs = iter(range(args.runs))
        bridged_ua = _median(
            "bridge opcua",
            args.runs,
            lambda: _through_bridge([ua_device], args.seconds, state / f"ua-{next(runs)}"),
        )
    with _process(_modbus_server, mb_port):
        raw_mb = _median(
            "raw pymodbus", args.runs, lambda: _raw_modbus(mb_port, args.registers, args.seconds)
        )
        mb_device = {
            "protocol": "modbus",
            "id": "bench-modbus",
            "port": mb_port,
            "groups": [
                {
                    "interval": 0.0001,
                    "points": [{"name": f"r{i}", "address": i} for i in range(args.registers)],
                }
            ],
        }
        runs = iter(range(args.runs))
        bridged_mb = _median(
            "bridge modbus",
            args.runs,
            lambda: _through_bridge([mb_device], args.seconds, state / f"mb-{next(runs)}"),
        )
    ratio = bridged_ua / raw_ua if raw_ua else 0.0
    modbus_ratio = bridged_mb / raw_mb if raw_mb else 0.0
    return {
        "opcua_values_per_s": round(bridged_ua, 1),
        "raw_opcua_values_per_s": round(raw_ua, 1),
        "ratio": round(ratio, 3),
        "modbus_registers_per_s": round(bridged_mb, 1),
        "raw_modbus_registers_per_s": round(raw_mb, 1),
        "modbus_ratio": round(modbus_ratio, 3),
        "targets_met": ratio >= 0.8 and modbus_ratio >= 0.8,
        "variables": args.variables,
        "update_ms": args.update_ms,
        "registers": args.registers,
        "seconds": args.seconds,
        "runs": args.runs,
    }
