"""Events S2 raises for the cloud: zombies, stuck sensors, inconsistent metrics, limit changes.

They are tagged msgspec Structs (one union, one decoder) so the outbox can store them as they
are and the cloud can dispatch on ``kind``. Each carries ``ts_ms``, the wall-clock time it was
raised, because it may travel days later in a fresh envelope. New fields get defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec

UnitKind = Literal["device", "unit"]


class ZombieDeclared(msgspec.Struct, frozen=True, tag="s2.zombie", omit_defaults=True):
    """A device or child unit stopped its heartbeat long enough that phi crossed the threshold."""

    unit: str
    unit_kind: UnitKind
    phi: float
    silent_s: float
    mean_interval_s: float
    ts_ms: int
    reassigned: bool = False


class ZombieRecovered(msgspec.Struct, frozen=True, tag="s2.zombie.recovered", omit_defaults=True):
    unit: str
    unit_kind: UnitKind
    silent_s: float
    ts_ms: int


class SensorStuck(msgspec.Struct, frozen=True, tag="s2.sensor.stuck", omit_defaults=True):
    """A metric repeated one value for at least the configured samples and duration."""

    device: str
    metric: str
    value: float
    samples: int
    frozen_s: float
    ts_ms: int


class SensorRecovered(msgspec.Struct, frozen=True, tag="s2.sensor.recovered", omit_defaults=True):
    device: str
    metric: str
    ts_ms: int


class MetricsInconsistent(
    msgspec.Struct, frozen=True, tag="s2.metrics.inconsistent", omit_defaults=True
):
    """A configured relation between two metrics failed for several readings in a row."""

    device: str
    relation: str
    left: float
    right: float
    violations: int
    ts_ms: int


class MetricsConsistent(
    msgspec.Struct, frozen=True, tag="s2.metrics.consistent", omit_defaults=True
):
    device: str
    relation: str
    ts_ms: int


class LimitsChanged(msgspec.Struct, frozen=True, tag="s2.limits", omit_defaults=True):
    """The load factor or the fair-share cap moved (tightened or relaxed)."""

    factor: float
    previous_factor: float
    pressure: list[str]
    fair_cap: float | None
    ts_ms: int


class LeaseExpired(msgspec.Struct, frozen=True, tag="s2.lease.expired", omit_defaults=True):
    """A holder neither finished nor renewed in time; the actuator is free again."""

    device: str
    actuator: str | None
    holder: str
    token: int
    ts_ms: int


class LeaseGranted(msgspec.Struct, frozen=True, tag="s2.lease.granted", omit_defaults=True):
    """A command took an actuator's lease (audited on the gateway: who drove what, when)."""

    device: str
    actuator: str | None
    holder: str
    command_id: str
    token: int
    ts_ms: int


class LeaseRefused(msgspec.Struct, frozen=True, tag="s2.lease.refused", omit_defaults=True):
    """A command was refused an actuator's lease, with the reason and who held it."""

    device: str
    actuator: str | None
    command_id: str
    reason: str
    held_by: str | None
    ts_ms: int


class EventsSuppressed(msgspec.Struct, frozen=True, tag="s2.events.suppressed", omit_defaults=True):
    """Per-device events over the event budget since ``since_ms``, counted instead of sent.

    ``suppressed`` maps an event type (``"s2.zombie"``) to how many were not sent one by one,
    ``sample`` names a few of their sources. ``zombies`` and ``sensors_stuck`` are the totals
    now (sent one by one or not), so the cloud learns that 40,000 devices went silent from
    one event. ``untracked`` counts the signs of life S2 could not keep since ``since_ms``:
    heartbeats of new units not tracked (every slot held a unit with a learnt cadence) and
    units heard from once that were dropped to make room. Non-zero means ``[s2.phi]
    max_units`` is smaller than the set of names ingest lets through.
    """

    suppressed: dict[str, int]
    sample: dict[str, list[str]]
    zombies: int
    sensors_stuck: int
    since_ms: int
    ts_ms: int
    untracked: int = 0


S2Event = (
    ZombieDeclared
    | ZombieRecovered
    | SensorStuck
    | SensorRecovered
    | MetricsInconsistent
    | MetricsConsistent
    | LimitsChanged
    | LeaseExpired
    | LeaseGranted
    | LeaseRefused
    | EventsSuppressed
)

EventSink = Callable[[S2Event], None]
"""Where S2 sends events; the gateway routes them to the outbox. Must not block."""

decoder: msgspec.msgpack.Decoder[S2Event] = msgspec.msgpack.Decoder(S2Event)


def discard(_event: S2Event) -> None:
    """The default sink: S2 parts work (and are testable) with no outbox attached."""
