"""Telemetry wire types: readings, batches and the cloud's application-level ack.

Reading identity is (device, boot, seq): ``seq`` increases by one per reading within one
boot of a device; a device that sends no seq gets one from the gateway on arrival (with the
gateway's own boot id for that device). Deduplication everywhere relies on this triple.
Schema evolution: new fields get defaults; an existing field never changes type.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

MIN_INT, MAX_INT = -(2**63), 2**63 - 1
"""Integers the outbox, the cloud store and their readers all represent exactly."""


class InvalidValueError(ValueError):
    """A measurement (or event attribute) that cannot be stored; the message names its path."""


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
    urgent: bool = False
    """An algedonic signal or an alert: the gateway sends it on its urgent lane, ahead of any
    telemetry backlog (gateway.urgent)."""


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
    refused: dict[int, str] = msgspec.field(default_factory=dict)
    """Readings (by index in the batch) the cloud cannot store, with the reason: the gateway
    keeps them in its dead-letter table instead of sending them again."""
    refused_events: dict[int, str] = msgspec.field(default_factory=dict)


class BatchNack(msgspec.Struct, frozen=True, tag="telemetry.nack", omit_defaults=True):
    """The cloud did not store an authentic batch. ``retry``: send it again now, in a fresh
    envelope (it arrived stale, e.g. queued while the cloud was down, or stamped before the
    cloud's unclean restart); otherwise it can never be stored (``reason`` says why) and the
    gateway dead-letters its rows."""

    batch_id: str
    reason: str
    retry: bool
    detail: str = ""


def check_values(values: dict[Any, Any], limit: int, *, max_depth: int = 8) -> None:
    """The one rule for measurement values, at the gateway's ingest and in the cloud's store:
    raise :class:`InvalidValueError` naming the field's path (``values.a[2].b``) for nesting
    deeper than ``max_depth``, more than ``limit`` leaves, a key that is not a string, a type
    other than int/float/str/bool/None/list/dict, an integer outside the signed 64-bit range,
    or a float that is NaN or infinite. Iterative: no recursion a payload could exhaust."""
    if len(values) <= limit and _flat_and_storable(values):
        return  # the common case, checked without the walk
    n = 0
    stack: list[tuple[Any, str, int]] = [(values, "values", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, dict):
            if depth >= max_depth:
                raise InvalidValueError(f"{path}: values nest deeper than {max_depth} levels")
            if not value and depth:
                n += 1
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidValueError(
                        f"{path}: field names must be strings, got {type(key).__name__}"
                    )
                stack.append((item, f"{path}.{key[:40]}", depth + 1))
        elif isinstance(value, list):
            if depth >= max_depth:
                raise InvalidValueError(f"{path}: values nest deeper than {max_depth} levels")
            if not value:
                n += 1
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        else:
            check_scalar(value, path)
            n += 1
        if n > limit or len(stack) > limit:
            raise InvalidValueError(f"more than {limit} fields")


def check_scalar(value: Any, path: str) -> None:
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise InvalidValueError(f"{path}: integer outside the signed 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(f"{path}: {value} is not a finite number")
        return
    raise InvalidValueError(f"{path}: unsupported value type {type(value).__name__}")


def _flat_and_storable(values: dict[Any, Any]) -> bool:
    for key, v in values.items():
        t = type(v)
        if type(key) is not str:
            return False
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if MIN_INT <= v <= MAX_INT:
                continue
            return False
        if t is not float or not math.isfinite(v):
            return False
    return True


def check_reading(reading: Reading, limit: int = 10_000) -> None:
    """What the cloud checks of each reading a verified batch carries before storing it:
    identity and times in range, values by :func:`check_values`; raises InvalidValueError."""
    if not 0 <= reading.seq <= MAX_INT:
        raise InvalidValueError("seq: outside 0 to 2**63-1")
    if not (0 <= reading.ts_ms <= MAX_INT and 0 <= reading.received_ms <= MAX_INT):
        raise InvalidValueError("ts_ms/received_ms: outside 0 to 2**63-1")
    if not reading.device or len(reading.device) > 256 or len(reading.boot) > 256:
        raise InvalidValueError("device or boot id: empty or longer than 256 characters")
    check_values(reading.values, limit)


def check_event(event: EventRecord, limit: int = 10_000) -> None:
    """:func:`check_reading` for an event record (its attrs are stored as JSON too)."""
    if not 0 <= event.ts_ms <= MAX_INT:
        raise InvalidValueError("ts_ms: outside 0 to 2**63-1")
    check_values(event.attrs, limit)
