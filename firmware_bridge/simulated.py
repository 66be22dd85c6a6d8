"""Simulated machines for the demo, the benchmark and the tests: a real asyncua server with a
small machine address space and a real pymodbus server (TCP, or RTU on a serial line)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator

from asyncua import ua
from asyncua.server.server import Server
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

NAMESPACE = "urn:cybernetic:simulated-machine"


class OpcuaMachine:
    """``Objects/Machine`` with Temperature (Double), Speed (Int32, writable), Running
    (Boolean), Name (String) and a ``Reset`` method that sets Speed to 0."""

    def __init__(self, port: int, *, host: str = "127.0.0.1") -> None:
        self.endpoint = f"opc.tcp://{host}:{port}/machine"
        self.server = Server()
        self.ns = 0
        self.variables: dict[str, ua.NodeId] = {}

    async def setup(self) -> None:
        # a simulator: asyncua's notes on its own open endpoint are not the operator's concern
        logging.getLogger("asyncua.server").setLevel(logging.ERROR)
        s = self.server
        await s.init()
        s.set_endpoint(self.endpoint)
        s.set_server_name("Cybernetic simulated machine")
        self.ns = await s.register_namespace(NAMESPACE)
        machine = await s.nodes.objects.add_object(
            ua.NodeId.from_string(f"ns={self.ns};s=" + "Machine"), "Machine"
        )
        for name, value, vtype in (
            ("Temperature", 20.0, ua.VariantType.Double),
            ("Speed", 0, ua.VariantType.Int32),
            ("Running", False, ua.VariantType.Boolean),
            ("Name", "press-1", ua.VariantType.String),
        ):
            var = await machine.add_variable(
                ua.NodeId.from_string(f"ns={self.ns};s=" + f"Machine.{name}"),
                name,
                ua.Variant(value, vtype),
            )
            if name == "Speed":
                await var.set_writable()
            self.variables[name] = var.nodeid

        async def reset(_parent: ua.NodeId) -> list[ua.Variant]:
            await self.write("Speed", 0)
            return [ua.Variant(Value=True, VariantType=ua.VariantType.Boolean)]

        await machine.add_method(
            ua.NodeId.from_string(f"ns={self.ns};s=" + "Machine.Reset"),
            "Reset",
            reset,
            [],
            [ua.VariantType.Boolean],
        )

    def node(self, name: str) -> str:
        return self.variables[name].to_string()

    async def write(self, name: str, value: object) -> None:
        """Set a variable as the machine would (keeping its type)."""
        if not isinstance(value, ua.Variant):
            current = self.server.read_attribute_value(self.variables[name]).Value
            value = ua.Variant(value, current.VariantType) if current else ua.Variant(value)
        await self.server.write_attribute_value(self.variables[name], ua.DataValue(value))

    async def read(self, name: str) -> object:
        variant = self.server.read_attribute_value(self.variables[name]).Value
        return variant.Value if variant is not None else None

    async def tick(self) -> None:
        """One simulated step: the temperature drifts."""
        await self.write(
            "Temperature", ua.Variant(20.0 + 5 * math.sin(time.time() / 10), ua.VariantType.Double)
        )

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()


def modbus_device(unit: int = 1, size: int = 256) -> SimDevice:
    """A device with ``size`` coils, discrete inputs, holding and input registers from 0."""
    bits = [SimData(0, count=size, values=False, datatype=DataType.BITS)]
    regs = [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)]
    return SimDevice(id=unit, simdata=(list(bits), list(bits), list(regs), list(regs)))


def modbus_tcp(
    port: int, units: tuple[int, ...] = (1,), *, host: str = "127.0.0.1"
) -> ModbusTcpServer:
    """Call ``await server.serve_forever(background=True)``; ``await server.shutdown()``."""
    return ModbusTcpServer([modbus_device(u) for u in units], address=(host, port))


def modbus_rtu(
    port: str, units: tuple[int, ...] = (1,), baudrate: int = 19200
) -> ModbusSerialServer:
    return ModbusSerialServer([modbus_device(u) for u in units], port=port, baudrate=baudrate)


def demo_devices(opcua_port: int, modbus_port: int) -> list[dict[str, object]]:
    """``[[bridge.devices]]`` for the demo's two machines."""
    ns = "ns=2;s=Machine."
    return [
        {
            "protocol": "opcua",
            "id": "press-1",
            "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/machine",
            "publish_ms": 500,
            "points": [
                {"name": "temperature", "node": ns + "Temperature", "sampling_ms": 500},
                {"name": "speed", "node": ns + "Speed", "writable": True},
            ],
        },
        {
            "protocol": "modbus",
            "id": "meter-1",
            "port": modbus_port,
            "groups": [
                {
                    "interval": 1.0,
                    "points": [
                        {"name": "power_w", "address": 0, "type": "uint32"},
                        {"name": "voltage", "address": 2, "type": "int16", "scale": 0.1},
                    ],
                }
            ],
        },
    ]


@contextlib.asynccontextmanager
async def demo_machines(opcua_port: int, modbus_port: int) -> AsyncIterator[None]:
    """The demo's press (OPC-UA) and power meter (Modbus TCP), their values drifting."""
    press = OpcuaMachine(opcua_port)
    await press.setup()
    await press.start()
    meter = modbus_tcp(modbus_port)
    await meter.serve_forever(background=True)

    async def drift() -> None:
        while True:
            await press.tick()
            watts = int(1500 + 300 * math.sin(time.time() / 7))
            await meter.async_setValues(1, 3, 0, [watts >> 16, watts & 0xFFFF, 2301])
            await asyncio.sleep(1.0)

    task = asyncio.create_task(drift())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await meter.shutdown()  # type: ignore[no-untyped-call]
        await press.stop()
