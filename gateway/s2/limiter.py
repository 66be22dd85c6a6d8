"""GCRA rate limiting per key, with a batch path lean enough for a million decisions a second.

GCRA (the generic cell rate algorithm) is a token bucket stored as one float per key: the
*theoretical arrival time* (TAT) of the next event. An event at ``now`` conforms when
``TAT - now <= tau`` (``tau = (burst - 1) * T``, ``T = 1 / rate``); it then moves TAT to
``max(TAT, now) + T``. One float per key and no refill arithmetic is why it is used here.

Keys with a per-key override (a CRDT row from the cloud, or a config override) are kept out of
the hot dictionary: the hot loop reads ``tats.get(key, inf)``, and ``inf`` fails the conformance
test, so the only extra work for an override or a never-seen key happens in the deny branch.
An entry whose TAT is in the past means exactly what a missing one means, so :meth:`prune`
drops those without changing any future decision.

The table is bounded (``max_keys``). A new key that finds it full first prunes it; if that
frees less than an eighth of it (a flood of distinct keys all within their burst), the keys
with the smallest TAT are dropped down to seven eighths: those are the ones closest to being
pruned anyway, and dropping one only gives that key a fresh burst. The work is amortised over
the ``max_keys / 8`` new keys that then fit, and it runs on the deny branch only (new keys
are handled there), so the hot loop is unchanged. ``denied_by_key`` is bounded the same way
(keys beyond it are counted in ``denied_untracked``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping

from gateway.s2.config import RateLimit

_INF = float("inf")
_SLACK = 1e-6
"""Fraction of an emission interval forgiven, so float rounding in TAT sums never costs a burst."""


class _Override:
    """A key with its own limit; its TAT lives here, not in the hot dictionary."""

    __slots__ = ("limit", "tat")

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.tat = 0.0


class KeyedLimiter:
    """Per-key GCRA with one default limit, per-key overrides and two runtime knobs.

    ``factor`` (from load adaptation) scales every rate; ``cap`` (from fair share) bounds every
    rate from above. Both take effect from the next decision. ``allowed``/``denied`` are plain
    integers read by the metrics collector; ``denied_by_key`` counts refusals per key (written
    only on the deny branch) so the worst offenders can be shown.
    """

    def __init__(
        self,
        default: RateLimit,
        clock: Callable[[], float],
        overrides: Mapping[str, RateLimit] | None = None,
        max_keys: int = 10_000,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self._clock = clock
        self._default = default
        self._max_keys = max_keys
        self._tats: dict[str, float] = {}
        self._overrides: dict[str, _Override] = {}
        self._factor = 1.0
        self._cap = _INF
        self._interval = 1.0
        self._tau = 0.0
        self.allowed = 0
        self.denied = 0
        self.denied_by_key: dict[str, int] = {}
        self.denied_untracked = 0
        """Refusals of keys not counted in ``denied_by_key`` because it was full."""
        self.evicted = 0
        """Keys in credit debt dropped to make room (each got a fresh burst)."""
        for key, limit in (overrides or {}).items():
            self.set_override(key, limit)
        self._recompute()

    # -- configuration -------------------------------------------------------------------

    @property
    def default(self) -> RateLimit:
        return self._default

    @property
    def factor(self) -> float:
        return self._factor

    @property
    def cap(self) -> float:
        return self._cap

    def effective_rate(self, key: str | None = None) -> float:
        """Events per second ``key`` (or a default key) may sustain right now."""
        override = self._overrides.get(key) if key is not None else None
        limit = override.limit if override is not None else self._default
        return min(limit.rate * self._factor, self._cap)

    def set_default(self, limit: RateLimit) -> None:
        self._default = limit
        self._recompute()

    def set_override(self, key: str, limit: RateLimit | None) -> None:
        """Give ``key`` its own limit, or (``None``) return it to the default."""
        if limit is None:
            old = self._overrides.pop(key, None)
            if old is not None and old.tat > 0:
                self._tats[key] = old.tat
            return
        existing = self._overrides.get(key)
        if existing is not None:
            existing.limit = limit
            return
        override = _Override(limit)
        override.tat = self._tats.pop(key, 0.0)
        self._overrides[key] = override

    def overrides(self) -> dict[str, RateLimit]:
        return {key: o.limit for key, o in self._overrides.items()}

    def set_factor(self, factor: float) -> None:
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        self._factor = factor
        self._recompute()

    def set_cap(self, cap: float | None) -> None:
        """Bound every key's rate by ``cap`` events per second (``None`` lifts the bound)."""
        if cap is not None and cap <= 0:
            raise ValueError(f"cap must be positive, got {cap}")
        self._cap = _INF if cap is None else cap
        self._recompute()

    def _recompute(self) -> None:
        rate = min(self._default.rate * self._factor, self._cap)
        self._interval = 1.0 / rate
        self._tau = (self._default.burst - 1 + _SLACK) * self._interval

    # -- decisions -----------------------------------------------------------------------

    def allow_batch(self, keys: Iterable[str], demand: dict[str, int] | None = None) -> list[bool]:
        """One decision per key, in order, all at the same instant.

        This is the hot path: locals only, no function call on the allow branch (hence the
        conditional expression instead of ``max``).

        ``demand``, when given, gets every key counted (allowed or not): fair share needs the
        true offered load while the global budget is under pressure. It is a separate loop so
        the common case pays nothing for it.
        """
        now = self._clock()
        horizon = now + self._tau
        interval = self._interval
        tats = self._tats
        get = tats.get
        out: list[bool] = []
        allow = out.append
        if demand is None:
            for key in keys:
                tat = get(key, _INF)
                if tat <= horizon:
                    tats[key] = (tat if tat > now else now) + interval  # noqa: FURB136 - no call
                    allow(True)  # noqa: FBT003
                else:
                    allow(self._slow(key, tat, now))
        else:
            dget = demand.get
            for key in keys:
                demand[key] = dget(key, 0) + 1
                tat = get(key, _INF)
                if tat <= horizon:
                    tats[key] = (tat if tat > now else now) + interval  # noqa: FURB136 - no call
                    allow(True)  # noqa: FBT003
                else:
                    allow(self._slow(key, tat, now))
        granted = out.count(True)
        self.allowed += granted
        self.denied += len(out) - granted
        return out

    def _slow(self, key: str, tat: float, now: float) -> bool:
        """A default key over its limit, a key never seen, or a key with an override."""
        if tat == _INF:
            override = self._overrides.get(key)
            if override is None:  # first event of this key (or first since pruned)
                if len(self._tats) >= self._max_keys:
                    self._make_room(now)
                self._tats[key] = now + self._interval
                return True
            if self._conform_override(override, now):
                return True
        self._count_denied(key)
        return False

    def _count_denied(self, key: str) -> None:
        counts = self.denied_by_key
        count = counts.get(key)
        if count is not None:
            counts[key] = count + 1
        elif len(counts) < self._max_keys:
            counts[key] = 1
        else:
            self.denied_untracked += 1

    def _make_room(self, now: float) -> None:
        """Prune; if that freed little, drop the smallest TATs down to 7/8 of the table."""
        tats = self._tats
        self.prune(now)
        target = self._max_keys - max(1, self._max_keys // 8)
        excess = len(tats) - target
        if excess > 0:
            for key in heapq.nsmallest(excess, tats, key=tats.__getitem__):
                del tats[key]
            self.evicted += excess

    def _conform_override(self, override: _Override, now: float) -> bool:
        rate = min(override.limit.rate * self._factor, self._cap)
        interval = 1.0 / rate
        tat = max(now, override.tat)
        if tat - now <= (override.limit.burst - 1 + _SLACK) * interval:
            override.tat = tat + interval
            return True
        return False

    def refuse(self, key: str) -> None:
        """Count a refusal decided elsewhere (a command checked with :meth:`retry_after`)."""
        self.denied += 1
        self._count_denied(key)

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` would conform (0.0 if it conforms now); changes nothing."""
        now = self._clock()
        override = self._overrides.get(key)
        if override is not None:
            rate = min(override.limit.rate * self._factor, self._cap)
            tau = (override.limit.burst - 1 + _SLACK) / rate
            return max(0.0, override.tat - now - tau)
        tat = self._tats.get(key)
        if tat is None:
            return 0.0
        return max(0.0, tat - now - self._tau)

    def allow(self, key: str) -> bool:
        """One decision (commands and intents; readings use :meth:`allow_batch`)."""
        return self.allow_batch((key,))[0]

    # -- housekeeping --------------------------------------------------------------------

    def prune(self, now: float | None = None) -> int:
        """Forget keys whose TAT has passed (they decide exactly as unseen keys); returns count."""
        if now is None:
            now = self._clock()
        stale = [key for key, tat in self._tats.items() if tat <= now]
        for key in stale:
            del self._tats[key]
        return len(stale)

    def tracked(self) -> int:
        """Keys with state (in credit debt); overrides included."""
        return len(self._tats) + len(self._overrides)

    @property
    def capacity(self) -> int:
        """Keys the default table holds at most (overrides come from configuration)."""
        return self._max_keys

    def set_capacity(self, max_keys: int) -> None:
        """Change the bound; a smaller one takes effect at the next new key."""
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self._max_keys = max_keys

    def limited_keys(self) -> int:
        """Keys refused at least once since the last :meth:`reset_window`."""
        return len(self.denied_by_key)

    def top_denied(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.denied_by_key.items(), key=lambda kv: kv[1], reverse=True)[:n]

    def reset_window(self) -> None:
        self.denied_by_key = {}


class Budget:
    """A single GCRA shared by every key: how many of ``n`` simultaneous events fit now.

    This is the gateway-wide budget behind fair share. It is a hard backstop: fair share sets
    per-device caps so the sum fits, and this refuses whatever still does not.
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._limit = limit
        self._factor = 1.0
        self._tat = 0.0
        self.allowed = 0
        self.denied = 0

    @property
    def limit(self) -> RateLimit:
        return self._limit

    def set_limit(self, limit: RateLimit) -> None:
        self._limit = limit

    def set_factor(self, factor: float) -> None:
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        self._factor = factor

    @property
    def rate(self) -> float:
        """Sustained events per second right now (the configured rate times the factor)."""
        return self._limit.rate * self._factor

    def take(self, n: int) -> int:
        """Grant up to ``n`` events (all at the current instant); returns how many."""
        if n <= 0:
            return 0
        now = self._clock()
        interval = 1.0 / self.rate
        tat = max(now, self._tat)
        room = math.floor((now + (self._limit.burst - 1) * interval - tat) / interval + _SLACK) + 1
        granted = min(n, max(0, room))
        self._tat = tat + granted * interval
        self.allowed += granted
        self.denied += n - granted
        return granted
