"""Budgets: requests, tokens and cost per period, for a provider or a caller.

A period is a fixed window of ``period_s`` from the first use; at its end the counters start
again. :meth:`Budget.admit` refuses (:class:`BudgetExceeded`) once a measure is spent, or when
the request's estimated input alone would overspend it; it counts the request at once (so
concurrent requests cannot all slip through). :meth:`Budget.spend` adds what the provider
reported it used.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cloud.llm.errors import BudgetExceeded
from cloud.llm.settings import BudgetSettings


class Budget:
    def __init__(
        self,
        scope: str,
        settings: BudgetSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scope = scope
        self.settings = settings
        self._clock = clock
        self._start: float | None = None
        self.requests = 0
        self.tokens = 0
        self.cost = 0.0

    def _roll(self) -> float:
        now = self._clock()
        if self._start is None:
            self._start = now
        elif now - self._start >= self.settings.period_s:
            periods = (now - self._start) // self.settings.period_s
            self._start += periods * self.settings.period_s
            self.requests, self.tokens, self.cost = 0, 0, 0.0
        return now

    def resets_in(self) -> float:
        now = self._roll()
        assert self._start is not None
        return self._start + self.settings.period_s - now

    def admit(self, tokens: int = 0, cost: float = 0.0) -> None:
        s = self.settings
        if s.unlimited:
            return
        self._roll()
        if s.requests and self.requests >= s.requests:
            raise BudgetExceeded(self.scope, "requests", s.requests, self.resets_in())
        if s.tokens and self.tokens + tokens > s.tokens:
            raise BudgetExceeded(self.scope, "tokens", s.tokens, self.resets_in())
        if s.cost and self.cost + cost > s.cost:
            raise BudgetExceeded(self.scope, "cost", s.cost, self.resets_in())
        self.requests += 1

    def spend(self, tokens: int, cost: float) -> None:
        if self.settings.unlimited:
            return
        self._roll()
        self.tokens += tokens
        self.cost += cost

    def snapshot(self) -> dict[str, float]:
        return {"requests": self.requests, "tokens": self.tokens, "cost": round(self.cost, 6)}
