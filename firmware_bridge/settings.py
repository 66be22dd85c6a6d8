"""The bridge's configuration: devices, and how their nodes and registers map to metrics.

Every field is a msgspec Struct field with ``forbid_unknown_fields``. :func:`parse_devices`
checks a whole list of devices at once and reports **every** bad field with its path
(``$.bridge.devices[1].groups[0].points[2].type: ...``), not only the first, then checks what
a type cannot say (register counts, bit fields, duplicate metric names, writable tables).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

import msgspec

from firmware_bridge.errors import MappingError

Identifier = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
Metric = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
DataType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float32", "float64", "string",
]  # fmt: skip
Order = Literal["big", "little"]
REGISTERS = {
    "bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
    "int64": 4, "uint64": 4, "float64": 4,
}  # fmt: skip
"""Registers each type spans (a string spans ``count``)."""


class ModbusPoint(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Metric
    table: Literal["coil", "discrete", "holding", "input"] = "holding"
    address: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    type: DataType = "uint16"
    """For coils and discrete inputs always ``bool``."""
    count: Annotated[int, msgspec.Meta(ge=0, le=123)] = 0
    """Registers of a ``string``."""
    bit: Annotated[int, msgspec.Meta(ge=0, le=63)] | None = None
    """A bit field: the value is ``bits`` bits from this one (0 = least significant)."""
    bits: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    byte_order: Order = "big"
    """Byte order inside each register."""
    word_order: Order = "big"
    """Register order of multi-register values (``little``: least significant first)."""
    scale: float = 1.0
    offset: float = 0.0
    units: str = ""
    writable: bool = False

    def registers(self) -> int:
        if self.table in ("coil", "discrete"):
            return 1
        return self.count if self.type == "string" else REGISTERS[self.type]


class ModbusGroup(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    unit: Annotated[int, msgspec.Meta(ge=0, le=255)] = 1
    interval: Seconds = 1.0
    points: list[ModbusPoint]


class ModbusDevice(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="protocol", tag="modbus"
):
    id: Identifier
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 502
    serial_port: str = ""
    """RTU: the serial device (``/dev/ttyUSB0``, or a stable name from serial-devices.conf)."""
    baudrate: Annotated[int, msgspec.Meta(ge=300, le=4_000_000)] = 19200
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout: Seconds = 1.0
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 1
    max_gap: Annotated[int, msgspec.Meta(ge=0, le=100)] = 8
    """Unused registers a merged block read may span to save a request."""
    max_block: Annotated[int, msgspec.Meta(ge=1, le=125)] = 125
    """Registers per read request (the protocol's limit is 125)."""
    groups: list[ModbusGroup]


class OpcuaPoint(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Metric
    node: Annotated[str, msgspec.Meta(min_length=3)]
    """A NodeId string: ``ns=2;s=Machine.Temperature``, ``ns=2;i=1001``."""
    mode: Literal["subscribe", "poll"] = "subscribe"
    sampling_ms: Annotated[float, msgspec.Meta(ge=0)] = 100.0
    deadband: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    deadband_type: Literal["absolute", "percent"] = "absolute"
    scale: float = 1.0
    offset: float = 0.0
    units: str = ""
    writable: bool = False


class OpcuaMethod(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Identifier
    object: str
    method: str


class OpcuaDevice(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="protocol", tag="opcua"
):
    id: Identifier
    endpoint: Annotated[str, msgspec.Meta(pattern=r"^opc\.tcp://")]
    security: Literal["none", "sign_encrypt"] = "none"
    """``sign_encrypt``: Basic256Sha256 Sign&Encrypt with ``certificate_file``/``key_file``."""
    certificate_file: str = ""
    key_file: str = ""
    server_certificate_file: str = ""
    """The machine's certificate; empty: taken from its endpoint."""
    username: str = ""
    password_file: str = ""
    publish_ms: Annotated[float, msgspec.Meta(gt=0)] = 100.0
    poll_interval: Seconds = 1.0
    timeout: Seconds = 4.0
    points: list[OpcuaPoint]
    methods: list[OpcuaMethod] = msgspec.field(default_factory=list)


Device = ModbusDevice | OpcuaDevice
_BY_PROTOCOL: dict[str, type[msgspec.Struct]] = {"modbus": ModbusDevice, "opcua": OpcuaDevice}


def _collect(data: Any, tp: type[msgspec.Struct], path: str) -> list[str]:
    """Every error of ``data`` against ``tp``, descending into lists of Structs."""
    if not isinstance(data, dict):
        return [f"{path}: expected a table, got {type(data).__name__}"]
    fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
    tag_field = tp.__struct_config__.tag_field
    errors = [
        f"{path}.{k}: unknown field (known: {', '.join(sorted(fields))})"
        for k in data
        if k not in fields and k != tag_field
    ]
    hints = typing.get_type_hints(tp, include_extras=True)
    for name, f in fields.items():
        here = f"{path}.{name}"
        if name not in data:
            if f.required:
                errors.append(f"{here}: required field is missing")
            continue
        hint, value = hints[f.name], data[name]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            if not isinstance(value, list):
                errors.append(f"{here}: expected an array, got {type(value).__name__}")
                continue
            for i, item in enumerate(value):
                errors.extend(_collect(item, inner, f"{here}[{i}]"))
            continue
        try:
            msgspec.convert(value, hint, strict=False)
        except msgspec.ValidationError as exc:
            detail = str(exc).split(" - at ", 1)
            suffix = (
                detail[1].removeprefix("`").removeprefix("$").rstrip("`") if len(detail) > 1 else ""
            )
            errors.append(f"{here}{suffix}: {detail[0]}")
    return errors


def _check_modbus(device: ModbusDevice, path: str) -> list[str]:  # noqa: C901 - one flat list of rules
    errors: list[str] = []
    if device.transport == "rtu" and not device.serial_port:
        errors.append(f"{path}.serial_port: required with transport = 'rtu'")
    names: set[str] = set()
    for g, group in enumerate(device.groups):
        for p, point in enumerate(group.points):
            here = f"{path}.groups[{g}].points[{p}]"
            if point.name in names:
                errors.append(f"{here}.name: {point.name!r} is mapped twice")
            names.add(point.name)
            bitwise = point.table in ("coil", "discrete")
            if bitwise and point.type != "bool":
                errors.append(f"{here}.type: a {point.table} is a bool, not {point.type}")
            if point.type == "string" and point.count == 0:
                errors.append(f"{here}.count: a string needs its register count")
            if point.type != "string" and point.count:
                errors.append(f"{here}.count: only a string takes a count")
            if point.bit is not None:
                width = 16 * point.registers()
                if bitwise or point.type in ("string", "float32", "float64"):
                    errors.append(f"{here}.bit: bit fields need an integer register type")
                elif point.bit + point.bits > width:
                    errors.append(f"{here}.bit: bits {point.bit}+{point.bits} exceed {width}")
            if point.writable and point.table in ("discrete", "input"):
                errors.append(f"{here}.writable: {point.table} tables are read-only")
            if point.address + point.registers() > 65536:
                errors.append(f"{here}.address: the value runs past register 65535")
    return errors


def _check_opcua(device: OpcuaDevice, path: str) -> list[str]:
    errors: list[str] = []
    if device.security == "sign_encrypt":
        errors.extend(
            f"{path}.{name}: required with security = 'sign_encrypt'"
            for name in ("certificate_file", "key_file")
            if not getattr(device, name)
        )
    if device.username and not device.password_file:
        errors.append(f"{path}.password_file: required with a username")
    names: set[str] = set()
    for p, point in enumerate(device.points):
        if point.name in names:
            errors.append(f"{path}.points[{p}].name: {point.name!r} is mapped twice")
        names.add(point.name)
        if not point.node.startswith(("ns=", "i=", "s=", "g=", "b=")):
            errors.append(f"{path}.points[{p}].node: not a NodeId string: {point.node!r}")
    return errors


def parse_devices(raw: list[Any], path: str = "$.bridge.devices") -> list[Device]:
    """The devices of a mapping, or :class:`MappingError` naming every bad field."""
    errors: list[str] = []
    devices: list[Device] = []
    ids: set[str] = set()
    for i, item in enumerate(raw):
        here = f"{path}[{i}]"
        protocol = item.get("protocol") if isinstance(item, dict) else None
        tp = _BY_PROTOCOL.get(protocol) if isinstance(protocol, str) else None
        if tp is None:
            errors.append(
                f"{here}.protocol: expected one of {sorted(_BY_PROTOCOL)}, got {protocol!r}"
            )
            continue
        found = _collect(item, tp, here)
        if found:
            errors.extend(found)
            continue
        device = typing.cast("Device", msgspec.convert(item, tp, strict=False))
        if device.id in ids:
            errors.append(f"{here}.id: device {device.id!r} is configured twice")
        ids.add(device.id)
        if isinstance(device, ModbusDevice):
            errors.extend(_check_modbus(device, here))
        else:
            errors.extend(_check_opcua(device, here))
        devices.append(device)
    if errors:
        raise MappingError(errors)
    return devices


class BridgeSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The gateway's ``[bridge]`` section (docs/configuration.md, docs/bridge.md)."""

    devices: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """``[[bridge.devices]]`` tables, checked by :func:`parse_devices` (every bad field)."""
    process: Literal["inline", "separate"] = "inline"
    """``inline``: a child of the gateway daemon; ``separate``: the gateway leaves it to its own
    process, ``cybernetic bridge run`` (its own unit), so a misbehaving adapter cannot take
    ingest down and the gateway's memory stays small."""
    health_interval: Seconds = 5.0
    """Seconds between two health readings of a connected device (its S2 heartbeat)."""
    reconnect_initial: Seconds = 0.5
    reconnect_max: Seconds = 30.0

    def __post_init__(self) -> None:
        parse_devices(self.devices)

    def parsed(self) -> list[Device]:
        return parse_devices(self.devices)
