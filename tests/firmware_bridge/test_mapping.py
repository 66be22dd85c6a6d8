"""Mappings are checked at start-up, every bad field named with its path; the codec."""

from __future__ import annotations

import struct

import pytest

from amcp.runtime.config import ConfigError, from_dict
from firmware_bridge.codec import decode, encode
from firmware_bridge.errors import MappingError
from firmware_bridge.settings import ModbusPoint, parse_devices
from gateway.config import GatewayConfig


def test_every_bad_field_is_named_with_its_path() -> None:
    raw = [
        {
            "protocol": "modbus",
            "id": "plc-1",
            "groups": [
                {
                    "points": [
                        {"name": "a", "address": 0, "type": "int33"},
                        {"name": "b", "address": "x"},
                        {"name": "c", "address": 1, "type": "string"},
                        {"name": "d", "table": "input", "address": 2, "writable": True},
                    ]
                }
            ],
        },
        {"protocol": "opcua", "id": "m", "endpoint": "http://x", "points": [{"name": "t"}]},
        {"protocol": "profibus", "id": "z"},
    ]
    with pytest.raises(MappingError) as caught:
        parse_devices(raw)
    errors = "\n".join(caught.value.errors)
    for path in (
        "$.bridge.devices[0].groups[0].points[0].type",
        "$.bridge.devices[0].groups[0].points[1].address",
        "$.bridge.devices[1].endpoint",
        "$.bridge.devices[1].points[0].node: required",
        "$.bridge.devices[2].protocol",
    ):
        assert path in errors, errors


def test_semantic_errors_and_the_gateway_config() -> None:
    raw = [
        {
            "protocol": "modbus",
            "id": "plc-1",
            "transport": "rtu",
            "groups": [
                {
                    "points": [
                        {"name": "c", "address": 1, "type": "string"},
                        {"name": "d", "table": "input", "address": 2, "writable": True},
                        {"name": "d", "address": 3, "type": "float32", "bit": 2},
                    ]
                }
            ],
        }
    ]
    config = {
        "gateway": {"id": "gw"},
        "uplink": {"link_secret_file": "/x"},
        "bridge": {"devices": raw},
    }
    with pytest.raises(ConfigError) as caught:
        from_dict(config, GatewayConfig, environ={})
    text = str(caught.value)
    for path in (
        "$.bridge.devices[0].serial_port",
        "$.bridge.devices[0].groups[0].points[0].count",
        "$.bridge.devices[0].groups[0].points[1].writable",
        "$.bridge.devices[0].groups[0].points[2].name",
        "$.bridge.devices[0].groups[0].points[2].bit",
    ):
        assert path in text, text


@pytest.mark.parametrize(
    ("kind", "value", "byte_order", "word_order"),
    [
        ("int16", -5, "big", "big"),
        ("uint32", 0x01020304, "big", "little"),
        ("int64", -(2**40), "little", "little"),
        ("float32", 1.5, "big", "big"),
        ("float64", -2.25, "little", "big"),
    ],
)
def test_codec_round_trips(kind: str, value: float, byte_order: str, word_order: str) -> None:
    point = ModbusPoint(
        name="p", address=0, type=kind, byte_order=byte_order, word_order=word_order
    )  # type: ignore[arg-type]
    regs = encode(point, value)
    assert len(regs) == point.registers()
    assert decode(point, regs) == pytest.approx(value)


def test_codec_orders_bits_strings_scaling() -> None:
    raw = struct.pack(">f", 3.5)
    regs = [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]
    swapped = ModbusPoint(name="p", address=0, type="float32", word_order="little")
    assert decode(swapped, list(reversed(regs))) == 3.5
    bits = ModbusPoint(name="b", address=0, type="uint16", bit=4, bits=3)
    assert decode(bits, [0b1110000]) == 0b111
    flag = ModbusPoint(name="f", address=0, type="bool", bit=1)
    assert decode(flag, [0b10]) is True
    text = ModbusPoint(name="s", address=0, type="string", count=3)
    assert decode(text, encode(text, "abc")) == "abc"
    scaled = ModbusPoint(name="t", address=0, type="int16", scale=0.1, offset=-40)
    assert decode(scaled, encode(scaled, 21.5)) == pytest.approx(21.5)
    with pytest.raises(ValueError, match="does not fit"):
        encode(ModbusPoint(name="u", address=0, type="uint16"), 70000)
