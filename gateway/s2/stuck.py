"""Stuck sensors and inconsistent metrics: a live device reporting dead data.

A device can keep its cadence (so phi-accrual sees it alive) while a sensor on it has frozen:
the ADC latched, the firmware resends a cached value. A metric is *stuck* when it stays within
``epsilon`` of the value that began the streak for at least ``min_samples`` readings **and**
``min_duration_s`` seconds; both are required so that neither a fast sensor (many samples in a
short calm spell) nor a slow one (long time, few samples) raises a false alarm.

Metrics can also contradict each other (power above voltage times current, a humidity over
100 %). Configured :class:`~gateway.s2.config.Relation` checks run on every reading that has
both sides, and flag after ``consecutive`` violations in a row (one glitch is not a fault).
Both conditions emit an event when they begin and when they end.
"""

from __future__ import annotations

import time
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


class _Streak:
    __slots__ = ("count", "flagged", "since", "value")

    def __init__(self, value: float, now: float) -> None:
        self.value = value
        self.since = now
        self.count = 1
        self.flagged = False


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
    ) -> None:
        self._config = config
        self._clock = clock
        self._emit = emit
        self._wall = wall
        self._ignore = frozenset(config.ignore)
        self._streaks: dict[str, dict[str, _Streak]] = {}
        self._violations: dict[str, dict[str, int]] = {}
        self._inconsistent: set[tuple[str, str]] = set()
        self.stuck_count = 0

    def reconfigure(self, config: StuckConfig) -> None:
        self._config = config
        self._ignore = frozenset(config.ignore)

    def observe(self, device: str, values: Mapping[str, Any]) -> None:
        """One reading's values (e.g. ``Reading.values``) from ``device``."""
        now = self._clock()
        streaks = self._streaks.setdefault(device, {})
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
                    self.stuck_count -= 1
                    self._emit(SensorRecovered(device=device, metric=metric, ts_ms=self._ms()))
                streaks[metric] = _Streak(value, now)
        if self._config.relations:
            self._check_relations(device, values)

    def _maybe_flag(self, device: str, metric: str, streak: _Streak, now: float) -> None:
        cfg = self._config
        if streak.count >= cfg.min_samples and now - streak.since >= cfg.min_duration_s:
            streak.flagged = True
            self.stuck_count += 1
            self._emit(
                SensorStuck(
                    device=device,
                    metric=metric,
                    value=streak.value,
                    samples=streak.count,
                    frozen_s=now - streak.since,
                    ts_ms=self._ms(),
                )
            )

    def _check_relations(self, device: str, values: Mapping[str, Any]) -> None:
        counts = self._violations.setdefault(device, {})
        for relation in self._config.relations:
            left = _number(values.get(relation.left))
            right = (
                _number(values.get(relation.right))
                if isinstance(relation.right, str)
                else float(relation.right)
            )
            if left is None or right is None:
                continue
            key = (device, relation.name)
            if _holds(relation, left, right):
                counts[relation.name] = 0
                if key in self._inconsistent:
                    self._inconsistent.discard(key)
                    self._emit(
                        MetricsConsistent(device=device, relation=relation.name, ts_ms=self._ms())
                    )
                continue
            count = counts.get(relation.name, 0) + 1
            counts[relation.name] = count
            if count >= relation.consecutive and key not in self._inconsistent:
                self._inconsistent.add(key)
                self._emit(
                    MetricsInconsistent(
                        device=device,
                        relation=relation.name,
                        left=left,
                        right=right,
                        violations=count,
                        ts_ms=self._ms(),
                    )
                )

    def stuck(self) -> list[tuple[str, str]]:
        """(device, metric) pairs currently flagged as stuck."""
        return [
            (device, metric)
            for device, streaks in self._streaks.items()
            for metric, streak in streaks.items()
            if streak.flagged
        ]

    def inconsistent(self) -> list[tuple[str, str]]:
        """(device, relation) pairs currently flagged as inconsistent."""
        return sorted(self._inconsistent)

    def forget(self, device: str) -> None:
        streaks = self._streaks.pop(device, {})
        self.stuck_count -= sum(1 for s in streaks.values() if s.flagged)
        self._violations.pop(device, None)
        self._inconsistent = {k for k in self._inconsistent if k[0] != device}

    def _ms(self) -> int:
        return int(self._wall() * 1000)
