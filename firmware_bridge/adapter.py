"""The one adapter seam, the registry of adapters and each device's health.

An adapter is built from its device's settings and opened as an async context manager that
yields a :class:`Connection`: ``samples()`` yields readings as the device produces them (a
subscription's notifications, a polling group's block reads) and ``command()`` carries out a
write or a method call. Errors leave only as :mod:`firmware_bridge.errors` kinds: each module
maps its library's errors at this boundary. Protocol modules are imported on first use, so a
gateway without OPC-UA devices never loads asyncua.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from firmware_bridge.settings import Device


@dataclass(frozen=True, slots=True)
class Sample:
    """Values read together, with the time the device (or we) took them."""

    values: dict[str, Any]
    ts_ms: int


class Connection(Protocol):
    def samples(self) -> AsyncIterator[Sample]:
        """Readings until the link is lost (then raises ``UnreachableError``)."""
        ...

    async def command(self, action: str, args: dict[str, Any]) -> Any:
        """``write`` {point, value} or ``call`` {method, args}; returns the answer."""
        ...


@dataclass
class Health:
    """Per-device health: what S2 and the operator see (reads ok, errors, latency)."""

    reads_ok: int = 0
    errors: int = 0
    connects: int = 0
    connected: bool = False
    latency_ms: float = 0.0
    """Smoothed request latency (exponential average, 1/8)."""
    last_error: str = ""
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def ok(self, started: float) -> None:
        self.reads_ok += 1
        ms = (time.perf_counter() - started) * 1000
        self.latency_ms = ms if self.reads_ok == 1 else self.latency_ms + (ms - self.latency_ms) / 8

    def failed(self, kind: str, detail: str) -> None:
        self.errors += 1
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        self.last_error = detail[:300]

    def values(self) -> dict[str, Any]:
        return {
            "bridge.reads_ok": self.reads_ok,
            "bridge.errors": self.errors,
            "bridge.latency_ms": round(self.latency_ms, 3),
            "bridge.connects": self.connects,
        }


class Adapter(Protocol):
    device: str
    health: Health

    def connect(self) -> AbstractAsyncContextManager[Connection]: ...


AdapterFactory = Callable[[Any, Health], Adapter]

ADAPTERS: dict[str, str] = {
    "modbus": "firmware_bridge.modbus:ModbusAdapter",
    "opcua": "firmware_bridge.opcua:OpcuaAdapter",
}
"""protocol → ``module:class``; a plugin adds its own with :func:`register`."""


def register(protocol: str, target: str) -> None:
    ADAPTERS[protocol] = target


def build(device: Device, health: Health | None = None) -> Adapter:
    """The adapter of ``device``'s protocol (its module imported now)."""
    protocol = device.__struct_config__.tag
    module, _, name = ADAPTERS[str(protocol)].partition(":")
    factory: AdapterFactory = getattr(importlib.import_module(module), name)
    return factory(device, health if health is not None else Health())


def now_ms() -> int:
    return int(time.time() * 1000)
