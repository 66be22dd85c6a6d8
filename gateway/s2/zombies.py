"""Zombie detection: devices and child units that stopped their heartbeat (or telemetry).

A zombie is a unit the gateway still counts on that no longer shows signs of life. Each unit's
cadence is learnt by :class:`~gateway.s2.phi.PhiAccrual`; a periodic :meth:`check` declares
every unit whose phi crossed the threshold, emits :class:`ZombieDeclared` (the gateway routes
it to the outbox, so it reaches the cloud even after an outage) and calls the reassignment
hook so the unit's work (the devices a child unit polled, the commands it owned) moves
elsewhere. A heartbeat from a declared zombie emits :class:`ZombieRecovered`.

Detection bound: a unit is declared at its phi deadline (last heartbeat + mean interval +
acceptable pause + ``y*`` deviations, ``y* ≈ 5.22`` at threshold 8), at most one check period
later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from gateway.s2.config import PhiConfig
from gateway.s2.events import EventSink, UnitKind, ZombieDeclared, ZombieRecovered, discard
from gateway.s2.phi import PhiAccrual

log = logging.getLogger(__name__)

Reassign = Callable[[str, UnitKind], bool]
"""Move a zombie's work elsewhere; returns whether anything was moved."""


def _no_reassign(_unit: str, _kind: UnitKind) -> bool:
    return False


class ZombieDetector:
    """Tracks heartbeats of devices and child units and declares the silent ones zombies."""

    def __init__(
        self,
        config: PhiConfig,
        clock: Callable[[], float],
        *,
        emit: EventSink = discard,
        reassign: Reassign | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.phi = PhiAccrual(config, clock)
        self._clock = clock
        self._emit = emit
        self._reassign = reassign or _no_reassign
        self._wall = wall
        self._kinds: dict[str, UnitKind] = {}
        self._zombies: dict[str, float] = {}
        """Declared zombies and the silence (seconds) at which each was declared."""
        self.declared = 0
        self.recovered = 0

    def heartbeat(
        self, unit: str, kind: UnitKind = "device", expected_interval_s: float | None = None
    ) -> None:
        """A sign of life: an explicit heartbeat, or any reading from a device.

        ``expected_interval_s`` (a unit's announced cadence) seeds a new unit's history.
        """
        self._kinds[unit] = kind
        if unit in self._zombies:
            silence = self.phi.silence(unit)
            del self._zombies[unit]
            self.recovered += 1
            self._emit(
                ZombieRecovered(
                    unit=unit, unit_kind=kind, silent_s=silence, ts_ms=int(self._wall() * 1000)
                )
            )
        self.phi.heartbeat(unit, expected_interval_s)

    def heartbeats(self, devices: Iterable[str]) -> None:
        """Signs of life from a batch of readings (one per device however many readings)."""
        for device in set(devices):
            self.heartbeat(device, "device")

    def check(self) -> list[ZombieDeclared]:
        """Declare every newly overdue unit; call about once per smallest expected interval."""
        declared: list[ZombieDeclared] = []
        for unit in self.phi.overdue():
            if unit in self._zombies:
                continue
            kind = self._kinds[unit]
            silence = self.phi.silence(unit)
            self._zombies[unit] = silence
            try:
                moved = self._reassign(unit, kind)
            except Exception:
                log.exception("reassigning a zombie's work failed", extra={"unit": unit})
                moved = False
            event = ZombieDeclared(
                unit=unit,
                unit_kind=kind,
                phi=self.phi.phi(unit),
                silent_s=silence,
                mean_interval_s=self.phi.mean_interval(unit),
                ts_ms=int(self._wall() * 1000),
                reassigned=moved,
            )
            self.declared += 1
            declared.append(event)
            self._emit(event)
        return declared

    def bound(self, unit: str) -> float:
        """Silence after which ``unit`` will be declared (excluding the check period)."""
        return self.phi.deadline(unit) - (self._clock() - self.phi.silence(unit))

    def zombies(self) -> dict[str, UnitKind]:
        return {unit: self._kinds[unit] for unit in self._zombies}

    def is_zombie(self, unit: str) -> bool:
        return unit in self._zombies

    def forget(self, unit: str) -> None:
        """Stop tracking a unit that was removed on purpose (decommissioned, unplugged)."""
        self.phi.forget(unit)
        self._kinds.pop(unit, None)
        self._zombies.pop(unit, None)

    def counts(self) -> dict[UnitKind, int]:
        """Zombies per kind; safe from the metrics thread (iterates a copy)."""
        out: dict[UnitKind, int] = {"device": 0, "unit": 0}
        for unit in list(self._zombies):
            out[self._kinds.get(unit, "device")] += 1
        return out
