"""Phi-accrual failure detection (Hayashibara et al. 2004, as in Akka and Cassandra).

Instead of a fixed timeout, each unit's heartbeat intervals are summarised (mean and standard
deviation over a sliding window) and the silence since the last heartbeat is turned into
``phi = -log10(P(a heartbeat arrives later than this))``. ``phi = 8`` means a one in 10^8
chance that a live unit would be this late, whatever its cadence: a sensor reporting every
second and one reporting every ten minutes are judged on the same scale.

The normal tail is approximated with the logistic function (Akka's formula), written as
``phi = softplus(k) / ln 10`` with ``k = y * (1.5976 + 0.070566 * y^2)``, ``y`` the silence in
standard deviations; this form neither overflows nor takes ``log(0)`` however long the silence.
Because phi grows monotonically with silence, the silence at which it reaches the threshold is
a fixed number of deviations ``y*`` past the mean: :meth:`PhiAccrual.deadline` is therefore an
exact, precomputed detection bound, and a sweep only compares a time against it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from gateway.s2.config import PhiConfig

_LN10 = math.log(10.0)
_A = 1.5976
_B = 0.070566
MIN_INTERVAL_S = 1e-3
"""Heartbeats closer together than this are one arrival (a batch of readings, not a cadence)."""


def phi_of(y: float) -> float:
    """Phi for a silence ``y`` standard deviations past the (pause-adjusted) mean."""
    k = y * (_A + _B * y * y)
    if k > 0:
        return (k + math.log1p(math.exp(-k))) / _LN10
    return math.log1p(math.exp(k)) / _LN10


def deviations_at(threshold: float) -> float:
    """The ``y`` at which :func:`phi_of` equals ``threshold`` (bisection; phi is increasing)."""
    lo, hi = -50.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if phi_of(mid) < threshold:
            lo = mid
        else:
            hi = mid
    return hi


class _History:
    """One unit's heartbeat intervals with running sums, so mean and deviation are O(1)."""

    __slots__ = (
        "appended",
        "deadline",
        "intervals",
        "inv_std",
        "last",
        "mean",
        "seeded",
        "std",
        "sum",
        "sum_sq",
    )

    def __init__(self, now: float, first_interval: float, window: int) -> None:
        self.last = now
        # Seed like Akka: two intervals around the first estimate so the first real
        # intervals are judged against a plausible cadence, not against nothing. Unlike
        # Akka, the seeds are dropped once enough real intervals exist, so a generous
        # estimate never slows detection once the cadence is known.
        spread = first_interval / 4
        self.intervals: deque[float] = deque(
            (first_interval - spread, first_interval + spread), maxlen=window
        )
        self.sum = 2 * first_interval
        self.sum_sq = (first_interval - spread) ** 2 + (first_interval + spread) ** 2
        self.mean = 0.0
        self.std = 0.0
        self.inv_std = 0.0
        self.deadline = 0.0
        self.appended = 0
        self.seeded = True


class PhiAccrual:
    """Heartbeat histories of many units and their phi, on an injected monotonic clock."""

    def __init__(self, config: PhiConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._histories: dict[str, _History] = {}
        self._y_star = deviations_at(config.threshold)

    @property
    def config(self) -> PhiConfig:
        return self._config

    def __contains__(self, unit: object) -> bool:
        return unit in self._histories

    def __len__(self) -> int:
        return len(self._histories)

    def units(self) -> Iterator[str]:
        return iter(self._histories)

    def heartbeat(self, unit: str, expected_interval_s: float | None = None) -> None:
        """Record a heartbeat; ``expected_interval_s`` seeds a new unit's cadence if known."""
        now = self._clock()
        history = self._histories.get(unit)
        if history is None:
            first = expected_interval_s or self._config.first_interval_s
            history = _History(now, first, self._config.window)
            self._histories[unit] = history
            self._refresh(history)
            return
        interval = now - history.last
        if interval < MIN_INTERVAL_S:
            return
        intervals = history.intervals
        if len(intervals) == intervals.maxlen:
            old = intervals[0]
            history.sum -= old
            history.sum_sq -= old * old
        intervals.append(interval)
        history.appended += 1
        if history.appended % len(intervals) == 0:  # resum exactly: running sums drift
            history.sum = math.fsum(intervals)
            history.sum_sq = math.fsum(x * x for x in intervals)
        else:
            history.sum += interval
            history.sum_sq += interval * interval
        history.last = now
        if history.seeded and history.appended >= self._config.min_intervals:
            history.seeded = False
            real = list(intervals)[-history.appended :]
            intervals.clear()
            intervals.extend(real)
            history.sum = math.fsum(real)
            history.sum_sq = math.fsum(x * x for x in real)
        self._refresh(history)

    def _refresh(self, history: _History) -> None:
        n = len(history.intervals)
        mean = history.sum / n
        variance = max(0.0, history.sum_sq / n - mean * mean)
        std = max(math.sqrt(variance), self._config.min_std_s, self._config.min_std_ratio * mean)
        history.mean = mean + self._config.acceptable_pause_s
        history.std = std
        history.inv_std = 1.0 / std
        history.deadline = history.last + history.mean + self._y_star * std

    def phi(self, unit: str) -> float:
        """Current suspicion of ``unit`` (0 for a unit never heard from)."""
        history = self._histories.get(unit)
        if history is None:
            return 0.0
        return phi_of((self._clock() - history.last - history.mean) * history.inv_std)

    def phi_many(self, units: Iterable[str] | None = None) -> list[float]:
        """Phi of many units at one instant (all units when ``units`` is ``None``)."""
        now = self._clock()
        histories = self._histories
        selected = histories.values() if units is None else (histories[u] for u in units)
        exp = math.exp
        log1p = math.log1p
        out: list[float] = []
        append = out.append
        for h in selected:
            y = (now - h.last - h.mean) * h.inv_std
            k = y * (_A + _B * y * y)
            if k > 0:
                append((k + log1p(exp(-k))) / _LN10)
            else:
                append(log1p(exp(k)) / _LN10)
        return out

    def deadline(self, unit: str) -> float:
        """Clock time at which ``unit``'s phi reaches the threshold if no heartbeat comes."""
        return self._histories[unit].deadline

    def silence(self, unit: str) -> float:
        return self._clock() - self._histories[unit].last

    def mean_interval(self, unit: str) -> float:
        history = self._histories[unit]
        return history.sum / len(history.intervals)

    def overdue(self) -> list[str]:
        """Units whose phi is at or above the threshold now (a comparison per unit)."""
        now = self._clock()
        return [unit for unit, h in self._histories.items() if h.deadline <= now]

    def max_phi(self) -> float:
        """Highest phi of any unit; safe to call from the metrics thread (copies first)."""
        histories = list(self._histories.values())
        if not histories:
            return 0.0
        now = self._clock()
        worst = max((now - h.last - h.mean) * h.inv_std for h in histories)
        return phi_of(worst)

    def forget(self, unit: str) -> None:
        self._histories.pop(unit, None)
