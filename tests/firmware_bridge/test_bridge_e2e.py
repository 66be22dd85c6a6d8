"""The bridge inside the real gateway daemon: machine values reach the outbox and the cloud
through the same ingest path as MQTT telemetry; a dead machine degrades, the gateway stays."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from asyncua import ua

from cybernetic.mosquitto import free_port
from cybernetic.stack import Stack
from firmware_bridge.simulated import OpcuaMachine, modbus_tcp

pytestmark = pytest.mark.slow


async def test_machines_reach_the_cloud_and_a_dead_one_only_degrades(tmp_path: Path) -> None:
    mb_port, ua_port, dead_port = free_port(), free_port(), free_port()
    server = modbus_tcp(mb_port)
    await server.serve_forever(background=True)
    await server.async_setValues(1, 3, 0, [215])
    m = OpcuaMachine(ua_port)
    await m.setup()
    await m.start()
    await m.write("Temperature", ua.Variant(42.0, ua.VariantType.Double))
    devices = [
        {
            "protocol": "modbus",
            "id": "plc-1",
            "port": mb_port,
            "groups": [{"interval": 0.2, "points": [{"name": "temp", "address": 0, "scale": 0.1}]}],
        },
        {
            "protocol": "modbus",
            "id": "plc-dead",
            "port": dead_port,
            "timeout": 0.2,
            "groups": [{"points": [{"name": "x", "address": 0}]}],
        },
        {
            "protocol": "opcua",
            "id": "press-1",
            "endpoint": m.endpoint,
            "points": [{"name": "temperature", "node": m.node("Temperature")}],
        },
    ]
    stack = Stack(tmp_path / "stack", gateway={"bridge": {"devices": devices}})
    try:
        await asyncio.to_thread(stack.start)
        await asyncio.to_thread(stack.wait_gateway_ready)
        async with asyncio.timeout(60):
            while True:
                found = {device for device, _, _ in stack.cloud_keys()}
                if {"plc-1", "press-1"} <= found:
                    break
                await asyncio.sleep(0.5)
        assert "plc-dead" not in found
        assert stack.gateway_proc is not None
        assert stack.gateway_proc.poll() is None  # the dead machine did not take it down
        keys = [k for k in stack.cloud_keys() if k[0] == "plc-1"]
        assert all(boot.startswith("br-") for _, boot, _ in keys)
        assert len({seq for _, _, seq in keys}) == len(keys)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(stack.close)
        await server.shutdown()
        await m.stop()
