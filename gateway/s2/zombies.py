"""Zombie detection: devices and child units that stopped their heartbeat (or telemetry).

A zombie is a unit the gateway still counts on that no longer shows signs of life. Each unit's
cadence is learnt by :class:`~gateway.s2.phi.PhiAccrual`; a periodic :meth:`check` declares
every unit whose phi crossed the threshold, emits :class:`ZombieDeclared` (the gateway routes
it to the outbox, so it reaches the cloud even after an outage) and calls the reassignment
hook so the unit's work (the devices a child unit polled, the commands it owned) moves
elsewhere. A heartbeat from a declared zombie emits :class:`ZombieRecovered`.

Detection bound: a unit is declared at its phi deadline (last heartbeat + mean interval +
acceptable pause + ``y*`` deviations, ``y* ≈ 5.22`` at threshold 8), at most one check period
later (when more than ``max_declared_per_check`` units come due at once, the excess waits for
the following checks). A unit heard from only once has no deadline (see :mod:`gateway.s2.phi`).

Bounded state: a declared zombie leaves the phi table (its slot goes to a live unit) and is
kept as a small record (kind, last heartbeat, learnt mean interval) in a table of at most
``max_zombies``, oldest declared forgotten first. It is declared once; a heartbeat recovers it,
and its new history is seeded with the mean it had learnt, so a second silence is caught at
about the same bound. Events go through the :class:`~gateway.s2.throttle.EventThrottle`: a
declaration over budget is counted in the summary, and so is the recovery of such a zombie.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from gateway.s2.config import PhiConfig
from gateway.s2.events import EventSink, UnitKind, ZombieDeclared, ZombieRecovered, discard
from gateway.s2.phi import PhiAccrual, phi_of
from gateway.s2.throttle import EventThrottle

log = logging.getLogger(__name__)

Reassign = Callable[[str, UnitKind], bool]
"""Move a zombie's work elsewhere; returns whether anything was moved."""

_RECOVERED = "s2.zombie.recovered"


def _no_reassign(_unit: str, _kind: UnitKind) -> bool:
    return False


class _Zombie:
    """What is kept of a declared zombie (its phi history is dropped)."""

    __slots__ = ("announced", "inv_std", "kind", "last", "mean", "phi_mean")

    def __init__(
        self,
        kind: UnitKind,
        last: float,
        mean: float,
        phi_mean: float,
        inv_std: float,
        *,
        announced: bool,
    ) -> None:
        self.kind: UnitKind = kind
        self.last = last
        """Clock time of its last heartbeat."""
        self.mean = mean
        """Its learnt mean interval: the seed of its history when it recovers."""
        self.phi_mean = phi_mean
        self.inv_std = inv_std
        """With ``last``, what its phi (still growing) is computed from."""
        self.announced = announced
        """Whether its declaration was sent one by one (so its recovery will be too)."""


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
        throttle: EventThrottle | None = None,
    ) -> None:
        """Events go to ``throttle`` when given (it has its own sink), else all to ``emit``."""
        self._units: set[str] = set()
        """Tracked units of kind ``"unit"`` (every other tracked unit is a device)."""
        self.phi = PhiAccrual(config, clock, on_evict=self._units.discard)
        self._clock = clock
        self._throttle = throttle or EventThrottle(None, clock, emit, wall=wall)
        self._reassign = reassign or _no_reassign
        self._wall = wall
        self._zombies: OrderedDict[str, _Zombie] = OrderedDict()
        """Declared zombies, oldest declaration first."""
        self._max_zombies = config.max_zombies
        self.declared = 0
        self.recovered = 0
        self.forgotten = 0
        """Zombies dropped from a full table (the oldest declared); their recovery is silent."""

    @property
    def throttle(self) -> EventThrottle:
        return self._throttle

    def heartbeat(
        self, unit: str, kind: UnitKind = "device", expected_interval_s: float | None = None
    ) -> None:
        """A sign of life: an explicit heartbeat, or any reading from a device.

        ``expected_interval_s`` (a unit's announced cadence) seeds a new unit's history.
        """
        zombies = self._zombies
        if zombies:
            zombie = zombies.pop(unit, None)
            if zombie is not None:
                seed = self._recover(unit, kind, zombie)
                if expected_interval_s is None:
                    expected_interval_s = seed
        tracked = self.phi.heartbeat(unit, expected_interval_s)
        if kind == "unit":
            if tracked:
                self._units.add(unit)
        elif self._units:
            self._units.discard(unit)

    def heartbeats(self, devices: Iterable[str]) -> None:
        """Signs of life from a batch of readings (one per device however many readings)."""
        zombies = self._zombies
        units = self._units
        beat = self.phi.heartbeat
        for device in set(devices):
            seed = None
            if zombies:
                zombie = zombies.pop(device, None)
                if zombie is not None:
                    seed = self._recover(device, "device", zombie)
            if units:
                units.discard(device)
            beat(device, seed)

    def _recover(self, unit: str, kind: UnitKind, zombie: _Zombie) -> float:
        silence = self._clock() - zombie.last
        self.recovered += 1
        if zombie.announced:
            event = ZombieRecovered(
                unit=unit, unit_kind=kind, silent_s=silence, ts_ms=int(self._wall() * 1000)
            )
            self._throttle.offer(event, unit)
        else:
            self._throttle.suppress(_RECOVERED, unit)
        return zombie.mean

    def check(self) -> list[ZombieDeclared]:
        """Declare every newly overdue unit; call about once per smallest expected interval.

        The cost is the units that came due (see :meth:`PhiAccrual.take_overdue`), and at most
        ``max_declared_per_check`` are declared per call (the rest at the next calls).
        """
        declared: list[ZombieDeclared] = []
        phi = self.phi
        for unit in phi.take_overdue(phi.config.max_declared_per_check):
            kind: UnitKind = "unit" if unit in self._units else "device"
            silence = phi.silence(unit)
            mean = phi.mean_interval(unit)
            value = phi.phi(unit)
            phi_mean, inv_std = phi.suspicion(unit)
            phi.forget(unit)
            self._units.discard(unit)
            try:
                moved = self._reassign(unit, kind)
            except Exception:
                log.exception("reassigning a zombie's work failed", extra={"unit": unit})
                moved = False
            event = ZombieDeclared(
                unit=unit,
                unit_kind=kind,
                phi=value,
                silent_s=silence,
                mean_interval_s=mean,
                ts_ms=int(self._wall() * 1000),
                reassigned=moved,
            )
            self.declared += 1
            announced = self._throttle.offer(event, unit)
            last = self._clock() - silence
            self._remember(unit, _Zombie(kind, last, mean, phi_mean, inv_std, announced=announced))
            declared.append(event)
        return declared

    def _remember(self, unit: str, zombie: _Zombie) -> None:
        zombies = self._zombies
        zombies[unit] = zombie
        if len(zombies) > self._max_zombies:
            zombies.popitem(last=False)
            self.forgotten += 1

    def bound(self, unit: str) -> float:
        """Silence after which ``unit`` will be declared (excluding the check period)."""
        return self.phi.deadline(unit) - (self._clock() - self.phi.silence(unit))

    def zombies(self) -> dict[str, UnitKind]:
        return {unit: z.kind for unit, z in list(self._zombies.items())}

    def is_zombie(self, unit: str) -> bool:
        return unit in self._zombies

    def forget(self, unit: str) -> None:
        """Stop tracking a unit that was removed on purpose (decommissioned, unplugged)."""
        self.phi.forget(unit)
        self._units.discard(unit)
        self._zombies.pop(unit, None)

    def max_phi(self) -> float:
        """Highest phi of any unit, zombies included; safe from the metrics thread."""
        live = self.phi.max_phi()
        records = list(self._zombies.values())
        if not records:
            return live
        now = self._clock()
        worst = max((now - z.last - z.phi_mean) * z.inv_std for z in records)
        return max(live, phi_of(worst))

    def counts(self) -> dict[UnitKind, int]:
        """Zombies per kind; safe from the metrics thread (iterates a copy)."""
        out: dict[UnitKind, int] = {"device": 0, "unit": 0}
        for zombie in list(self._zombies.values()):
            out[zombie.kind] += 1
        return out

    def count(self) -> int:
        """Zombies now (of either kind)."""
        return len(self._zombies)
