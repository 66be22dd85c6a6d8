"""Stuck sensors and inconsistent metrics: a live device reporting dead data.

A device can keep its cadence (so phi-accrual sees it alive) while a sensor on it has frozen:
the ADC latched, the firmware resends a cached value. A metric is *stuck* when it stays within
``epsilon`` of the value that began the streak for at least ``min_samples`` readings **and**
``min_duration_s`` seconds; both are required so that neither a fast sensor (many samples in a
short calm spell) nor a slow one (long time, few samples) raises a false alarm.

Metrics can also contradict each other (power above voltage times current, a humidity over
100 %). Configured :class:`~gateway.s2.config.Relation` checks run on every reading that has
both sides, and flag after ``consecutive`` violations in a row (one glitch is not a fault).
Both conditions emit an event when they begin and when they end, through the
:class:`~gateway.s2.throttle.EventThrottle` (an end is sent one by one only if its beginning
was).

Bounded state: one entry per device (its streaks, relation counters and open conditions) in a
table of at most ``max_devices``, least recently seen dropped first, with its open conditions
(counted in ``evicted``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from gateway.s2.config import Relation, StuckConfig
from gateway.s2.events import (
    EventSink,
    MetricsConsistent,
    MetricsInconsistent,
    SensorRecovered,
    SensorStuck,
    discard,
)
from gateway.s2.throttle import EventThrottle

_RECOVERED = "s2.sensor.recovered"
_CONSISTENT = "s2.metrics.consistent"


class _Streak:
    __slots__ = ("announced", "count", "flagged", "since", "value")

    def __init__(self, value: float, now: float) -> None:
        self.value = value
        self.since = now
        self.count = 1
        self.flagged = False
        self.announced = False


class _Device:
    """One device's state: streaks per metric, violations per relation, open inconsistencies."""

    __slots__ = ("inconsistent", "streaks", "violations")

    def __init__(self) -> None:
        self.streaks: dict[str, _Streak] = {}
        self.violations: dict[str, int] = {}
        self.inconsistent: dict[str, bool] = {}
        """Relations flagged now, and whether the flag was sent one by one."""


def _holds(relation: Relation, left: float, right: float) -> bool:
    target = right * relation.scale + relation.offset
    tol = relation.tolerance
    match relation.op:
        case "==":
            return abs(left - target) <= tol
        case "<=":
            return left <= target + tol
        case "<":
            return left < target + tol
        case ">=":
            return left >= target - tol
        case ">":
            return left > target - tol


def _number(value: Any) -> float | None:
    """Numeric metric values only: booleans and strings are states, not sensor readings."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class StuckDetector:
    """Watches every numeric metric of every device; call :meth:`observe` per reading."""

    def __init__(
        self,
        config: StuckConfig,
        clock: Callable[[], float],
        *,
        emit: EventSink = discard,
        wall: Callable[[], float] = time.time,
        throttle: EventThrottle | None = None,
    ) -> None:
        """Events go to ``throttle`` when given (it has its own sink), else all to ``emit``."""
        self._config = config
        self._clock = clock
        self._throttle = throttle or EventThrottle(None, clock, emit, wall=wall)
        self._wall = wall
        self._ignore = frozenset(config.ignore)
        self._devices: OrderedDict[str, _Device] = OrderedDict()
        """Least recently seen first."""
        self.stuck_count = 0
        self.inconsistent_count = 0
        self.evicted = 0
        """Devices dropped from a full table (least recently seen first)."""

    def reconfigure(self, config: StuckConfig) -> None:
        self._config = config
        self._ignore = frozenset(config.ignore)
        while len(self._devices) > config.max_devices:
            self._evict()

    @property
    def capacity(self) -> int:
        return self._config.max_devices

    def __len__(self) -> int:
        """Devices with state."""
        return len(self._devices)

    def observe(self, device: str, values: Mapping[str, Any]) -> None:
        """One reading's values (e.g. ``Reading.values``) from ``device``."""
        now = self._clock()
        devices = self._devices
        state = devices.get(device)
        if state is None:
            if len(devices) >= self._config.max_devices:
                self._evict()
            state = devices[device] = _Device()
        else:
            devices.move_to_end(device)
        streaks = state.streaks
        for metric, raw in values.items():
            value = _number(raw)
            if value is None or metric in self._ignore:
                continue
            streak = streaks.get(metric)
            if streak is None:
                streaks[metric] = _Streak(value, now)
            elif abs(value - streak.value) <= self._config.epsilon:
                streak.count += 1
                if not streak.flagged:
                    self._maybe_flag(device, metric, streak, now)
            else:
                if streak.flagged:
                    self._recovered(device, metric, streak)
                streaks[metric] = _Streak(value, now)
        if self._config.relations:
            self._check_relations(device, state, values)

    def _recovered(self, device: str, metric: str, streak: _Streak) -> None:
        self.stuck_count -= 1
        if streak.announced:
            event = SensorRecovered(device=device, metric=metric, ts_ms=self._ms())
            self._throttle.offer(event, device)
        else:
            self._throttle.suppress(_RECOVERED, device)

    def _evict(self) -> None:
        _device, state = self._devices.popitem(last=False)
        self.stuck_count -= sum(1 for s in state.streaks.values() if s.flagged)
        self.inconsistent_count -= len(state.inconsistent)
        self.evicted += 1

    def _maybe_flag(self, device: str, metric: str, streak: _Streak, now: float) -> None:
        cfg = self._config
        if streak.count >= cfg.min_samples and now - streak.since >= cfg.min_duration_s:
            streak.flagged = True
            self.stuck_count += 1
            event = SensorStuck(
                device=device,
                metric=metric,
                value=streak.value,
                samples=streak.count,
                frozen_s=now - streak.since,
                ts_ms=self._ms(),
            )
            streak.announced = self._throttle.offer(event, device)

    def _check_relations(self, device: str, state: _Device, values: Mapping[str, Any]) -> None:
        counts = state.violations
        inconsistent = state.inconsistent
        for relation in self._config.relations:
            left = _number(values.get(relation.left))
            right = (
                _number(values.get(relation.right))
                if isinstance(relation.right, str)
                else float(relation.right)
            )
            if left is None or right is None:
                continue
            name = relation.name
            if _holds(relation, left, right):
                counts[name] = 0
                if name in inconsistent:
                    self.inconsistent_count -= 1
                    if inconsistent.pop(name):
                        event = MetricsConsistent(device=device, relation=name, ts_ms=self._ms())
                        self._throttle.offer(event, device)
                    else:
                        self._throttle.suppress(_CONSISTENT, device)
                continue
            count = counts.get(name, 0) + 1
            counts[name] = count
            if count >= relation.consecutive and name not in inconsistent:
                self.inconsistent_count += 1
                flagged = MetricsInconsistent(
                    device=device,
                    relation=name,
                    left=left,
                    right=right,
                    violations=count,
                    ts_ms=self._ms(),
                )
                inconsistent[name] = self._throttle.offer(flagged, device)

    def stuck(self) -> list[tuple[str, str]]:
        """(device, metric) pairs currently flagged as stuck."""
        return [
            (device, metric)
            for device, state in list(self._devices.items())
            for metric, streak in list(state.streaks.items())
            if streak.flagged
        ]

    def inconsistent(self) -> list[tuple[str, str]]:
        """(device, relation) pairs currently flagged as inconsistent."""
        return sorted(
            (device, name)
            for device, state in list(self._devices.items())
            for name in list(state.inconsistent)
        )

    def forget(self, device: str) -> None:
        state = self._devices.pop(device, None)
        if state is not None:
            self.stuck_count -= sum(1 for s in state.streaks.values() if s.flagged)
            self.inconsistent_count -= len(state.inconsistent)

    def _ms(self) -> int:
        return int(self._wall() * 1000)
