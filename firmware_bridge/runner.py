"""One device's life: connect, stream samples, reconnect with backoff; never raise.

An unreachable or misbehaving machine is a degraded device (its :class:`Health` says so and
its readings stop, which S2's zombie detection notices), never a failure of the bridge: every
error, even an adapter's bug, is counted and followed by a reconnect after a backoff (full
jitter, doubling up to ``reconnect_max``; a refused certificate or user waits the longest).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from firmware_bridge.adapter import Adapter, Connection, Sample
from firmware_bridge.errors import CommandError, SecurityError, UnreachableError

log = logging.getLogger(__name__)

Emit = Callable[[str, Sample], Awaitable[None]]


class DeviceRunner:
    def __init__(
        self, adapter: Adapter, emit: Emit, *, initial: float = 0.5, maximum: float = 30.0
    ) -> None:
        self.adapter = adapter
        self.emit = emit
        self.initial = initial
        self.maximum = maximum
        self.connection: Connection | None = None
        self.connected = asyncio.Event()

    @property
    def device(self) -> str:
        return self.adapter.device

    async def run(self) -> None:
        delay = self.initial
        health = self.adapter.health
        while True:
            try:
                async with self.adapter.connect() as conn:
                    self.connection, health.connected = conn, True
                    health.connects += 1
                    self.connected.set()
                    log.info("bridge device connected", extra={"device": self.device})
                    delay = self.initial
                    async for sample in conn.samples():
                        await self.emit(self.device, sample)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = "security" if isinstance(exc, SecurityError) else "link"
                if not isinstance(exc, UnreachableError):
                    kind = "adapter"
                health.failed(kind, str(exc))
                log.warning(
                    "bridge device unreachable",
                    extra={"device": self.device, "error": str(exc)[:300], "kind": kind},
                )
                if isinstance(exc, SecurityError):
                    delay = self.maximum
            finally:
                self.connection, health.connected = None, False
                self.connected.clear()
            await asyncio.sleep(random.uniform(0, delay) if delay < self.maximum else delay)
            delay = min(delay * 2, self.maximum)

    async def command(self, action: str, args: dict[str, Any]) -> Any:
        conn = self.connection
        if conn is None:
            raise CommandError(self.device, "not connected")
        return await conn.command(action, args)
