"""Phi-accrual failure detection (Hayashibara et al. 2004, as in Akka and Cassandra), shared by
both tiers: S2's zombie detector on the gateway (``gateway.s2.zombies``, through
``gateway.s2.phi``) and the cloud's fleet table of gateway heartbeats (``cloud.fleet``).

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
exact, precomputed detection bound. The deadlines sit in a heap, so a sweep
(:meth:`PhiAccrual.take_overdue`) costs only the entries that came due, not one per unit.

A unit heard from once has no interval: phi cannot know its cadence, and the configured
``first_interval_s`` is a guess. Such a unit is *not armed*: its phi is 0 and it has no
deadline until a second heartbeat (or a cadence the unit announced) gives it one. A device
that published a single reading is therefore never declared a zombie on the strength of the
guess alone.

The table is bounded (``max_units``). When it is full, units heard from only once are
dropped first (oldest first: under a flood of one-shot names they churn among themselves);
when every tracked unit is armed, a new unit is not tracked. Armed units are never evicted:
they leave only by being declared (the zombie detector forgets a unit's history then) or
forgotten, so a silent device is always declared, never silently dropped.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

_LN10 = math.log(10.0)
_A = 1.5976
_B = 0.070566
MIN_INTERVAL_S = 1e-3
"""Heartbeats closer together than this are one arrival (a batch of readings, not a cadence)."""
_INF = float("inf")


class PhiParameters(Protocol):
    """What the detector reads of its configuration (S2's ``[s2.phi]``, the cloud's
    ``[fleet]``): each tier keeps its own settings type and documentation."""

    @property
    def threshold(self) -> float: ...
    @property
    def window(self) -> int: ...
    @property
    def min_std_s(self) -> float: ...
    @property
    def acceptable_pause_s(self) -> float: ...
    @property
    def first_interval_s(self) -> float: ...
    @property
    def min_intervals(self) -> int: ...
    @property
    def min_std_ratio(self) -> float: ...
    @property
    def max_units(self) -> int: ...


P = TypeVar("P", bound=PhiParameters)


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
        "armed",
        "deadline",
        "intervals",
        "inv_std",
        "last",
        "mean",
        "scheduled",
        "seeded",
        "std",
        "sum",
        "sum_sq",
    )

    def __init__(self, now: float, first_interval: float, window: int, *, armed: bool) -> None:
        self.last = now
        self.armed = armed
        """Has a deadline: a real interval is known, or the unit announced its cadence."""
        self.scheduled = _INF
        """The deadline this unit's live heap entry carries (``inf``: no entry)."""
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


class PhiAccrual(Generic[P]):
    """Heartbeat histories of many units and their phi, on an injected monotonic clock."""

    def __init__(
        self,
        config: P,
        clock: Callable[[], float],
        *,
        on_evict: Callable[[str], object] | None = None,
    ) -> None:
        """``on_evict(unit)`` is called for each unit dropped to make room."""
        self._config = config
        self._clock = clock
        self._histories: dict[str, _History] = {}
        self._fresh: OrderedDict[str, None] = OrderedDict()
        """Units not armed (heard from once), oldest first: the first to go when full."""
        self._due: list[tuple[float, str]] = []
        """Heap of (deadline, unit); stale entries are skipped (and compacted away)."""
        self._max = config.max_units
        self._on_evict = on_evict
        self._y_star = deviations_at(config.threshold)
        self.evicted = 0
        """Units heard from once dropped to make room."""
        self.untracked = 0
        """Heartbeats of new units not tracked because every slot held an armed unit."""

    @property
    def config(self) -> P:
        return self._config

    def __contains__(self, unit: object) -> bool:
        return unit in self._histories

    def __len__(self) -> int:
        return len(self._histories)

    def units(self) -> Iterator[str]:
        return iter(self._histories)

    def heartbeat(self, unit: str, expected_interval_s: float | None = None) -> bool:
        """Record a heartbeat; ``expected_interval_s`` seeds a new unit's cadence if known.

        Returns whether ``unit`` is tracked (``False``: the table is full of armed units).
        """
        now = self._clock()
        history = self._histories.get(unit)
        if history is None:
            return self._add(unit, now, expected_interval_s)
        interval = now - history.last
        if interval < MIN_INTERVAL_S:
            return True
        if not history.armed:
            history.armed = True
            del self._fresh[unit]
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
        self._refresh(unit, history)
        return True

    def _add(self, unit: str, now: float, expected_interval_s: float | None) -> bool:
        histories = self._histories
        if len(histories) >= self._max:
            if not self._fresh:
                self.untracked += 1
                return False
            old, _ = self._fresh.popitem(last=False)
            del histories[old]
            self.evicted += 1
            if self._on_evict is not None:
                self._on_evict(old)
        if expected_interval_s is not None and 0 < expected_interval_s < _INF:
            first, announced = expected_interval_s, True
        else:
            first, announced = self._config.first_interval_s, False
        history = _History(now, first, self._config.window, armed=announced)
        histories[unit] = history
        if not announced:
            self._fresh[unit] = None
        self._refresh(unit, history)
        return True

    def _refresh(self, unit: str, history: _History) -> None:
        n = len(history.intervals)
        mean = history.sum / n
        variance = max(0.0, history.sum_sq / n - mean * mean)
        std = max(math.sqrt(variance), self._config.min_std_s, self._config.min_std_ratio * mean)
        history.std = std
        history.inv_std = 1.0 / std
        if not history.armed:
            # no cadence known: y = -inf, so phi is exactly 0 and the deadline never comes
            history.mean = _INF
            history.deadline = _INF
            return
        history.mean = mean + self._config.acceptable_pause_s
        deadline = history.last + history.mean + self._y_star * std
        history.deadline = deadline
        if deadline < history.scheduled:  # usually later than the entry it has: no push
            heapq.heappush(self._due, (deadline, unit))
            history.scheduled = deadline

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
        """Clock time at which ``unit``'s phi reaches the threshold if no heartbeat comes
        (``inf`` while it is not armed)."""
        return self._histories[unit].deadline

    def silence(self, unit: str) -> float:
        return self._clock() - self._histories[unit].last

    def suspicion(self, unit: str) -> tuple[float, float]:
        """``(mean, 1/std)`` as phi uses them (mean with the pause added): with the last
        heartbeat they are all phi needs, so a caller can keep phi of a dropped unit."""
        history = self._histories[unit]
        return history.mean, history.inv_std

    def mean_interval(self, unit: str) -> float:
        history = self._histories[unit]
        return history.sum / len(history.intervals)

    def overdue(self) -> list[str]:
        """Units whose phi is at or above the threshold now (a scan: a comparison per unit)."""
        now = self._clock()
        return [unit for unit, h in self._histories.items() if h.deadline <= now]

    def take_overdue(self, limit: int | None = None) -> list[str]:
        """Units whose deadline passed since they were last returned here (the sweep).

        Each unit is returned once per silence: again only after a new heartbeat. The cost is
        the heap entries that came due (``log n`` each), not a pass over every unit: an entry
        whose unit heartbeat since is moved to the unit's current deadline. At most ``limit``
        units are returned; the others stay due for the next call.
        """
        if limit is None:
            limit = len(self._histories)
        now = self._clock()
        due = self._due
        histories = self._histories
        out: list[str] = []
        while due and len(out) < limit:
            at, unit = due[0]
            if at > now:
                break
            history = histories.get(unit)
            if history is None or history.scheduled != at:
                heapq.heappop(due)  # forgotten, or superseded by an earlier entry
            elif history.deadline <= now:
                heapq.heappop(due)
                history.scheduled = _INF
                out.append(unit)
            else:  # heartbeat since: move the entry to the current deadline in one sift
                history.scheduled = history.deadline
                heapq.heapreplace(due, (history.deadline, unit))
        if len(due) > 2 * len(histories) + 64:
            self._compact()
        return out

    def _compact(self) -> None:
        """Rebuild the heap from the live entries (stale ones pile up only when a unit's
        deadline moved earlier, or it was forgotten with an entry pending)."""
        self._due = [(h.scheduled, u) for u, h in self._histories.items() if h.scheduled < _INF]
        heapq.heapify(self._due)

    def scheduled(self) -> int:
        """Entries in the deadline heap (live and stale)."""
        return len(self._due)

    @property
    def capacity(self) -> int:
        return self._max

    def armed(self, unit: str) -> bool:
        """Whether ``unit`` has a deadline (a cadence known); ``False`` if not tracked."""
        history = self._histories.get(unit)
        return history is not None and history.armed

    def max_phi(self) -> float:
        """Highest phi of any unit; safe to call from the metrics thread (copies first)."""
        histories = list(self._histories.values())
        if not histories:
            return 0.0
        now = self._clock()
        worst = max((now - h.last - h.mean) * h.inv_std for h in histories)
        return phi_of(worst)

    def forget(self, unit: str) -> None:
        if self._histories.pop(unit, None) is not None:
            self._fresh.pop(unit, None)
