"""Handlers for simulated devices (demo, examples): what a real device's firmware would do.

``temperature_handlers()`` answers ``sample`` by streaming ``n`` readings ``interval`` seconds
apart (progress and one partial result per reading) and ending with their mean, so the demo
shows an intent's whole lifecycle. Pair it with the capability :func:`sampling_capability`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

from gateway.s1.responder import Done, Handler, Partial, Progress, Step
from gateway.s1.settings import CapabilityConfig


def temperature_handlers(base: float = 21.0) -> dict[str, Handler]:
    async def sample(args: dict[str, Any]) -> AsyncIterator[Step]:
        n = max(1, min(int(args.get("n", 3)), 100))
        interval = max(0.0, min(float(args.get("interval", 0.2)), 5.0))
        readings = []
        for i in range(n):
            await asyncio.sleep(interval)
            value = round(base + random.uniform(-0.5, 0.5), 2)
            readings.append(value)
            yield Progress((i + 1) / n)
            yield Partial({"i": i, "temp": value})
        yield Done({"mean": round(sum(readings) / n, 3), "n": n})

    return {"sample": sample}


def sampling_capability(device: str, name: str = "temp.sample") -> CapabilityConfig:
    return CapabilityConfig(
        name=name,
        device=device,
        action="sample",
        description=f"stream n temperature samples from {device}, then their mean",
        input_schema={
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": 1, "maximum": 100},
                "interval": {"type": "number", "minimum": 0, "maximum": 5},
            },
            "additionalProperties": False,
        },
        output_schema={"type": "object", "properties": {"mean": {"type": "number"}}},
        cost=1.0,
        timeout=30.0,
    )
