"""A circuit breaker against spawn storms.

A bug or a flapping device group can make units spawn units in a loop; each spawn is cheap,
thousands are not. The breaker counts spawn *attempts* (refused ones too: a storm of refused
spawns is still a storm) in a sliding window. Past ``max_spawns`` it opens and refuses every
spawn for ``cooldown`` seconds; then it closes with an empty history. Time comes from a
:class:`~amcp.runtime.clock.Clock`, so tests move it by hand.
"""

from __future__ import annotations

from collections import deque

from amcp.runtime.clock import Clock
from gateway.s1.errors import SpawnBreakerOpenError
from gateway.s1.settings import BreakerSettings


class SpawnBreaker:
    def __init__(self, settings: BreakerSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._attempts: deque[float] = deque()
        self._open_until: float | None = None
        self.trips = 0

    @property
    def is_open(self) -> bool:
        return self._open_until is not None and self.clock.monotonic() < self._open_until

    def attempt(self, path: str) -> None:
        """Record a spawn attempt for ``path``; raise if the breaker is (or just went) open."""
        now = self.clock.monotonic()
        s = self.settings
        if self._open_until is not None:
            if now < self._open_until:
                raise SpawnBreakerOpenError(
                    path, self._open_until - now, len(self._attempts), s.window
                )
            self._open_until = None
            self._attempts.clear()
        self._attempts.append(now)
        while self._attempts and self._attempts[0] <= now - s.window:
            self._attempts.popleft()
        if len(self._attempts) > s.max_spawns:
            self._open_until = now + s.cooldown
            self.trips += 1
            raise SpawnBreakerOpenError(path, s.cooldown, len(self._attempts), s.window)

    def state(self) -> dict[str, object]:
        remaining = 0.0
        if self._open_until is not None:
            remaining = max(0.0, self._open_until - self.clock.monotonic())
        return {
            "open": self.is_open,
            "retry_after_s": round(remaining, 3),
            "trips": self.trips,
            "recent_spawns": len(self._attempts),
        }
