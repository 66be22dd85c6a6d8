"""Modbus TCP and RTU against real pymodbus servers: readings, commands with leases, outages,
exception answers."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.supervisor import ChildContext
from cybernetic.mosquitto import MosquittoBroker, free_port
from firmware_bridge.modbus import plan_blocks
from firmware_bridge.settings import ModbusGroup, ModbusPoint
from firmware_bridge.simulated import modbus_rtu, modbus_tcp
from gateway.s1.commands import CommandExecutor
from gateway.s2.leases import LeaseTable
from tests.firmware_bridge.conftest import gateway_link, listening, running_bridge, until
from tests.needs import needs

POINTS = [
    {"name": "temp", "address": 0, "type": "int16", "scale": 0.1, "units": "C"},
    {"name": "count", "address": 2, "type": "uint32", "word_order": "little"},
    {"name": "setpoint", "address": 10, "type": "float32", "writable": True},
    {"name": "flags", "address": 12, "bit": 3, "bits": 2},
    {"name": "alarm", "table": "discrete", "address": 5, "type": "bool"},
    {"name": "pump", "table": "coil", "address": 1, "type": "bool", "writable": True},
]


def device(port: int, **extra: object) -> dict[str, object]:
    return {
        "protocol": "modbus",
        "id": "plc-1",
        "port": port,
        "timeout": 0.3,
        "retries": 0,
        "groups": [{"unit": 1, "interval": 0.05, "points": POINTS}],
        **extra,
    }


def test_blocks_are_merged() -> None:
    group = ModbusGroup(points=[ModbusPoint(**p) for p in POINTS])  # type: ignore[arg-type]
    blocks = plan_blocks(group, max_gap=8, max_block=125)
    tables = [(b.table, b.start, b.count) for b in blocks]
    assert tables == [("coil", 1, 1), ("discrete", 5, 1), ("holding", 0, 13)]
    assert [(b.start, b.count) for b in plan_blocks(group, 0, 125) if b.table == "holding"] == [
        (0, 1),
        (2, 2),
        (10, 3),
    ]  # fmt: skip  (gap 0 still merges neighbours)


async def test_values_flow_and_commands_respect_the_lease(
    broker: MosquittoBroker, port: int
) -> None:
    server = modbus_tcp(port)
    await server.serve_forever(background=True)
    try:
        await server.async_setValues(1, 3, 0, [0xFF38])  # -200 → -20.0
        await server.async_setValues(1, 3, 2, [0x0002, 0x0001])  # little word order: 0x00010002
        await server.async_setValues(1, 3, 12, [0b11000])
        await server.async_setValues(1, 2, 5, [True])
        async with listening(broker) as listener, running_bridge(broker, [device(port)]) as bridge:
            _, reading = await listener.wait_for(lambda d, r: "temp" in r["values"])
            v = reading["values"]
            assert v["temp"] == pytest.approx(-20.0)
            assert v["count"] == 0x00010002
            assert v["flags"] == 0b11
            assert v["alarm"] is True
            assert reading["boot"] == bridge.boot_id
            assert reading["seq"] >= 1

            # commands through S1's executor: it takes the S2 lease of the device first
            leases = LeaseTable(time.monotonic, ttl_s=5.0)
            executor = CommandExecutor(
                gateway_link(broker), f"s1-{free_port()}", transport=MqttTransport(), leases=leases
            )
            ctx = ChildContext("s1")
            task = asyncio.create_task(executor.run(ctx))
            await ctx.wait_ready()
            await executor.wait_connected(5)

            async def write(point: str, value: object) -> object:
                replies = [
                    r
                    async for r in executor.execute(
                        "plc-1", "write", {"point": point, "value": value}, idle_timeout=5
                    )
                ]
                return replies[-1].data

            holder = await leases.take("plc-1", "operator", "manual")
            pending = asyncio.create_task(write("setpoint", 42.5))
            await asyncio.sleep(0.3)
            assert not pending.done()  # waits for the lease
            assert await server.async_getValues(1, 3, 10, 2) == [0, 0]
            leases.release(holder)
            assert await pending == {"point": "setpoint", "value": 42.5}
            assert await server.async_getValues(1, 3, 10, 2) == [0x422A, 0]
            await write("pump", True)
            assert (await server.async_getValues(1, 1, 1, 1))[0] is True
            _, after = await listener.wait_for(lambda d, r: r["values"].get("setpoint") == 42.5)
            assert after["values"]["pump"] is True
            with pytest.raises(Exception, match="not writable"):
                await write("temp", 1)
            task.cancel()
    finally:
        await server.shutdown()


async def test_peer_restart_and_exception_answers(broker: MosquittoBroker, port: int) -> None:
    bad = {"name": "missing", "address": 900}  # past the server's registers: an exception
    dev = device(port)
    dev["groups"] = [  # type: ignore[index]
        {"unit": 1, "interval": 0.05, "points": [*POINTS[:1]]},
        {"unit": 1, "interval": 0.05, "points": [bad]},
    ]
    server = modbus_tcp(port)
    await server.serve_forever(background=True)
    async with listening(broker) as listener, running_bridge(broker, [dev]) as bridge:
        await listener.wait_for(lambda d, r: "temp" in r["values"])
        health = bridge.health["plc-1"]
        await until(lambda: health.errors_by_kind.get("exception", 0) >= 2, 5)
        assert health.connected  # exception answers are counted, not fatal
        await server.shutdown()
        await until(lambda: not health.connected, 10)
        server = modbus_tcp(port)
        await server.serve_forever(background=True)
        await server.async_setValues(1, 3, 0, [77])
        await listener.wait_for(lambda d, r: r["values"].get("temp") == pytest.approx(7.7))
        assert health.connects >= 2
    await server.shutdown()


async def test_rtu_over_a_pty_pair(broker: MosquittoBroker) -> None:
    """A socat pseudo-terminal pair stands in for the RS-485 line: the server on one end,
    the bridge on the other (pyserial opens both by name)."""
    socat = shutil.which("socat")
    needs(socat is not None, "socat (scripts/ensure-system.sh installs it)")
    assert socat is not None
    d = tempfile.mkdtemp()
    a, b = f"{d}/server", f"{d}/bridge"
    line = [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"]
    proc = subprocess.Popen(line)  # noqa: ASYNC220 - socat runs beside the test's loop
    try:
        await until(lambda: Path(a).exists() and Path(b).exists(), 5)
        server = modbus_rtu(a)
        await server.serve_forever(background=True)
        await server.async_setValues(1, 4, 3, [1234])
        dev = {
            "protocol": "modbus",
            "id": "meter-1",
            "transport": "rtu",
            "serial_port": b,
            "timeout": 0.5,
            "groups": [
                {
                    "unit": 1,
                    "interval": 0.1,
                    "points": [{"name": "kwh", "table": "input", "address": 3}],
                }
            ],
        }
        async with listening(broker) as listener, running_bridge(broker, [dev]):
            _, reading = await listener.wait_for(lambda d, r: "kwh" in r["values"])
            assert reading["values"]["kwh"] == 1234
        await server.shutdown()
    finally:
        proc.terminate()
        proc.wait()


async def test_the_bridge_in_its_own_process(
    broker: MosquittoBroker, port: int, tmp_path: Path
) -> None:
    """``process = "separate"``: `cybernetic bridge run` alone, stopped by SIGTERM with 0."""
    import signal  # noqa: PLC0415
    import sys  # noqa: PLC0415

    import tomli_w  # noqa: PLC0415

    server = modbus_tcp(port)
    await server.serve_forever(background=True)
    await server.async_setValues(1, 3, 0, [123])
    config = {
        "gateway": {"id": "gw-b", "state_dir": str(tmp_path / "state")},
        "local_broker": {
            "port": broker.port,
            "username": "gateway",
            "password": broker.password("gateway"),
        },
        "uplink": {"link_secret_file": str(tmp_path / "unused")},
        "bridge": {"process": "separate", "devices": [device(port)]},
    }
    path = tmp_path / "gateway.toml"
    path.write_text(tomli_w.dumps(config))
    async with listening(broker) as listener:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cybernetic", "bridge", "run", "-c", str(path),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            _, reading = await listener.wait_for(lambda d, r: "temp" in r["values"], 30)
            assert reading["values"]["temp"] == pytest.approx(12.3)
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
    await server.shutdown()


async def test_a_peer_answering_garbage_is_counted_not_fatal(
    broker: MosquittoBroker, port: int
) -> None:
    """A TCP peer that answers every request with bytes that are no Modbus frame."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(256):
                writer.write(b"\xde\xad\xbe\xef not modbus at all \x00\x01")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", port)
    bridged = running_bridge(broker, [device(port, timeout=0.2)], health_interval=600)
    async with server, bridged as bridge:
        health = bridge.health["plc-1"]
        await until(lambda: health.errors_by_kind.get("no_answer", 0) >= 3, 15)
        await until(lambda: health.connects >= 2, 15)  # gave up on the link, connected again
        assert bridge.published == 0  # nothing made up from garbage
