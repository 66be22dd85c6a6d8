"""Registers to values and back: data types across registers, byte and word order, bit
fields, strings, scaling and offset (``value = raw * scale + offset``)."""

from __future__ import annotations

import struct

from firmware_bridge.settings import ModbusPoint

_FORMATS = {
    "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f",
    "int64": ">q", "uint64": ">Q", "float64": ">d", "bool": ">H",
}  # fmt: skip


def _to_bytes(point: ModbusPoint, registers: list[int]) -> bytes:
    regs = list(registers)
    if point.word_order == "little":
        regs.reverse()
    data = b"".join(r.to_bytes(2, "big") for r in regs)
    if point.byte_order == "little":
        data = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
    return data


def _from_bytes(point: ModbusPoint, data: bytes) -> list[int]:
    if point.byte_order == "little":
        data = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
    regs = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if point.word_order == "little":
        regs.reverse()
    return regs


def scaled(point: ModbusPoint | object, raw: float) -> float:
    scale = getattr(point, "scale", 1.0)
    offset = getattr(point, "offset", 0.0)
    if scale == 1.0 and offset == 0.0:
        return raw
    return raw * scale + offset


def decode(point: ModbusPoint, registers: list[int]) -> int | float | bool | str:
    """The value of ``point`` from its registers (coils/discrete inputs: one 0/1 each)."""
    if point.table in ("coil", "discrete"):
        return bool(registers[0])
    data = _to_bytes(point, registers)
    if point.type == "string":
        return data.rstrip(b"\x00 ").decode("utf-8", "replace")
    (raw,) = struct.unpack(_FORMATS[point.type], data)
    if point.bit is not None:
        unsigned = int.from_bytes(data, "big")
        raw = (unsigned >> point.bit) & ((1 << point.bits) - 1)
        if point.type == "bool":
            return bool(raw)
    elif point.type == "bool":
        return bool(raw)
    return scaled(point, raw)


def encode(point: ModbusPoint, value: object) -> list[int]:
    """Registers for a write of ``value`` (the inverse of :func:`decode`); ``ValueError``
    names what does not fit."""
    if point.type == "string":
        data = str(value).encode()[: 2 * point.count].ljust(2 * point.count, b"\x00")
        return _from_bytes(point, data)
    if point.bit is not None:
        raise ValueError(f"{point.name}: a bit field is not writable")
    if isinstance(value, bool) or point.type == "bool":
        return [1 if value else 0]
    if not isinstance(value, int | float):
        raise ValueError(f"{point.name}: expected a number, got {type(value).__name__}")  # noqa: TRY004 - one error type for a bad command value
    raw: int | float = (value - point.offset) / point.scale
    fmt = _FORMATS[point.type]
    if not point.type.startswith("float"):
        raw = round(raw)
    try:
        data = struct.pack(fmt, raw)
    except struct.error as exc:
        raise ValueError(f"{point.name}: {value!r} does not fit {point.type}") from exc
    return _from_bytes(point, data)
