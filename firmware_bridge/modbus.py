"""Modbus TCP and RTU through pymodbus: polling groups per unit id, merged block reads, writes.

Each group is polled at its own interval; its points are read in as few requests as possible
(:func:`plan_blocks`: neighbouring addresses of one table are merged while the gap stays under
``max_gap`` and the block under ``max_block`` registers). An exception answer or an answer
that cannot be parsed is counted against the device and its points are left out of that
sample; a lost connection (or ``retries`` failed requests in a row) ends the connection, and
the runner reconnects. pymodbus retries each request ``retries`` times after ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from firmware_bridge.adapter import Health, Sample, now_ms
from firmware_bridge.codec import decode, encode
from firmware_bridge.errors import AnswerError, CommandError, UnreachableError
from firmware_bridge.settings import ModbusDevice, ModbusGroup, ModbusPoint

MAX_BITS = 2000
"""Coils or discrete inputs per read request (the protocol's limit)."""
FAILURES_BEFORE_RECONNECT = 3


@dataclass(frozen=True)
class Block:
    unit: int
    table: str
    start: int
    count: int
    points: tuple[ModbusPoint, ...]


def plan_blocks(group: ModbusGroup, max_gap: int, max_block: int) -> list[Block]:
    """The fewest reads that cover the group's points (per table, in address order)."""
    blocks: list[Block] = []
    for table in ("coil", "discrete", "holding", "input"):
        points = sorted((p for p in group.points if p.table == table), key=lambda p: p.address)
        limit = MAX_BITS if table in ("coil", "discrete") else max_block
        current: list[ModbusPoint] = []
        start = end = 0
        for point in points:
            p_end = point.address + point.registers()
            if current and point.address - end <= max_gap and max(end, p_end) - start <= limit:
                current.append(point)
                end = max(end, p_end)
                continue
            if current:
                blocks.append(Block(group.unit, table, start, end - start, tuple(current)))
            current, start, end = [point], point.address, p_end
        if current:
            blocks.append(Block(group.unit, table, start, end - start, tuple(current)))
    return blocks


class ModbusAdapter:
    def __init__(self, config: ModbusDevice, health: Health) -> None:
        self.config = config
        self.device = config.id
        self.health = health
        self.plans = [
            (group, plan_blocks(group, config.max_gap, config.max_block)) for group in config.groups
        ]
        self.points = {p.name: (g.unit, p) for g in config.groups for p in g.points}
        self.plain = {
            id(p)
            for g in config.groups
            for p in g.points
            if p.table in ("holding", "input")
            and p.type == "uint16"
            and p.bit is None
            and p.byte_order == "big"
            and (p.scale, p.offset) == (1.0, 0.0)
        }
        self.requests = 0

    def _client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        c = self.config
        if c.transport == "rtu":
            return AsyncModbusSerialClient(
                c.serial_port,
                baudrate=c.baudrate,
                parity=c.parity,
                stopbits=c.stopbits,
                bytesize=c.bytesize,
                timeout=c.timeout,
                retries=c.retries,
                reconnect_delay=0,
            )
        return AsyncModbusTcpClient(
            c.host, port=c.port, timeout=c.timeout, retries=c.retries, reconnect_delay=0
        )

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[_ModbusConnection]:
        client = self._client()
        try:
            try:
                ok = await client.connect()
            except (OSError, ModbusException) as exc:
                raise UnreachableError(self.device, f"connect failed: {exc}") from exc
            if not ok:
                where = self.config.serial_port or f"{self.config.host}:{self.config.port}"
                raise UnreachableError(self.device, f"cannot connect to {where}")
            yield _ModbusConnection(self, client)
        finally:
            client.close()


class _ModbusConnection:
    def __init__(
        self, adapter: ModbusAdapter, client: AsyncModbusTcpClient | AsyncModbusSerialClient
    ) -> None:
        self.adapter = adapter
        self.client = client
        self.lock = asyncio.Lock()
        """One request at a time on the line (RTU is half duplex; TCP keeps order)."""
        self.failures = 0

    async def _request(self, call: Any, what: str) -> Any:
        health = self.adapter.health
        started = time.perf_counter()
        self.adapter.requests += 1
        try:
            async with self.lock:
                reply = await call
        except ConnectionException as exc:
            raise UnreachableError(self.adapter.device, f"{what}: connection lost") from exc
        except (ModbusException, OSError, ValueError, struct.error) as exc:
            self._count(health, "no_answer", f"{what}: {exc}")
            raise AnswerError(self.adapter.device, f"{what}: {exc}") from exc
        if reply.isError():
            code = getattr(reply, "exception_code", "?")
            self.failures = 0  # it answered: the line is up
            health.failed("exception", f"{what}: exception code {code}")
            raise AnswerError(self.adapter.device, f"{what}: exception code {code}")
        self.failures = 0
        health.ok(started)
        return reply

    def _count(self, health: Health, kind: str, detail: str) -> None:
        health.failed(kind, detail)
        self.failures += 1
        if self.failures >= FAILURES_BEFORE_RECONNECT or not self.client.connected:
            raise UnreachableError(
                self.adapter.device, f"{self.failures} failed requests: {detail}"
            )

    async def _read(self, block: Block) -> dict[str, Any]:
        c = self.client
        read = {
            "coil": c.read_coils,
            "discrete": c.read_discrete_inputs,
            "holding": c.read_holding_registers,
            "input": c.read_input_registers,
        }[block.table]
        call = read(block.start, count=block.count, device_id=block.unit)
        what = f"read {block.table} {block.start}+{block.count} unit {block.unit}"
        reply = await self._request(call, what)
        words = reply.bits if block.table in ("coil", "discrete") else reply.registers
        if len(words) < block.count:
            self._count(self.adapter.health, "short_answer", f"{what}: {len(words)} values")
            raise AnswerError(self.adapter.device, f"{what}: short answer")
        values: dict[str, Any] = {}
        start = block.start
        for point in block.points:
            offset = point.address - start
            if id(point) in self.adapter.plain:  # one register as it is: the common case, fast
                values[point.name] = words[offset]
            else:
                values[point.name] = decode(point, list(words[offset : offset + point.registers()]))
        return values

    async def samples(self) -> AsyncIterator[Sample]:
        loop = asyncio.get_running_loop()
        due = [loop.time()] * len(self.adapter.plans)
        while True:
            i = min(range(len(due)), key=due.__getitem__)
            await asyncio.sleep(max(0.0, due[i] - loop.time()))
            group, blocks = self.adapter.plans[i]
            due[i] = max(due[i] + group.interval, loop.time())
            values: dict[str, Any] = {}
            for block in blocks:
                with contextlib.suppress(AnswerError):  # counted; the other blocks go on
                    values.update(await self._read(block))
            if values:
                yield Sample(values, now_ms())

    async def command(self, action: str, args: dict[str, Any]) -> Any:
        device = self.adapter.device
        if action != "write":
            raise CommandError(device, f"unknown action {action!r} (modbus devices take 'write')")
        name = args.get("point")
        found = self.adapter.points.get(name) if isinstance(name, str) else None
        if found is None:
            raise CommandError(device, f"unknown point {name!r}")
        unit, point = found
        if not point.writable:
            raise CommandError(device, f"point {name!r} is not writable")
        value = args.get("value")
        c = self.client
        if point.table == "coil":
            call = c.write_coil(point.address, bool(value), device_id=unit)
        else:
            try:
                regs = encode(point, value)
            except ValueError as exc:
                raise CommandError(device, str(exc)) from exc
            call = c.write_registers(point.address, regs, device_id=unit)
        try:
            await self._request(call, f"write {name}")
        except AnswerError as exc:
            raise CommandError(device, str(exc)) from exc
        return {"point": name, "value": value}
