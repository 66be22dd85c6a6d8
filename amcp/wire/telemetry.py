"""Telemetry wire types: readings, batches and the cloud's application-level ack.

Reading identity is (device, boot, seq): ``seq`` increases by one per reading within one
boot of a device; a device that sends no seq gets one from the gateway on arrival (with the
gateway's own boot id for that device). Deduplication everywhere relies on this triple.
Schema evolution: new fields get defaults; an existing field never changes type.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Reading(msgspec.Struct, frozen=True, omit_defaults=True):
    """One telemetry reading as the gateway stores and forwards it."""

    device: str
    boot: str
    seq: int
    ts_ms: int
    """When the device (or, failing that, the gateway) took the reading, Unix ms."""
    values: dict[str, Any]
    received_ms: int = 0
    """When the gateway accepted it, Unix ms (for end-to-end latency)."""


class EventRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """Something a gateway noticed (an S2 zombie, a rule match), kept in its outbox like a
    reading so nothing is lost while the cloud is away. ``name`` is dotted (``s2.zombie``)."""

    name: str
    ts_ms: int
    source: str
    """The device, unit or subsystem it is about."""
    severity: str = "info"
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)


class TelemetryBatch(msgspec.Struct, frozen=True, tag="telemetry.batch", omit_defaults=True):
    """Readings (and events) forwarded by a gateway; ``batch_id`` stays the same across retries."""

    batch_id: str
    gateway: str
    readings: list[Reading]
    events: list[EventRecord] = msgspec.field(default_factory=list)


class BatchAck(msgspec.Struct, frozen=True, tag="telemetry.ack", omit_defaults=True):
    """Sent by the cloud after its own commit: only then may the gateway delete the batch."""

    batch_id: str
    stored: int
    duplicates: int = 0
