"""The policy section of a gateway's configuration (no wasmtime needed to read it)."""

from __future__ import annotations

from typing import Literal

import msgspec


class PolicyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``policy:`` in the gateway config: which policy to enforce at ingest, and how."""

    file: str
    """A ``.policy`` source file (compiled at start-up) or a compiled ``.wasm`` agent."""
    zones: dict[str, str] = {}
    """Device id → zone, for ``zone`` tests."""
    on_fault: Literal["keep", "drop"] = "keep"
    """When the agent faults on a batch: keep it unchecked (fail-open) or drop it."""
    memory_bytes: int = 16 << 20
