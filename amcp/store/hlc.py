"""Hybrid logical clock packed into one 64-bit integer.

Why a hybrid clock: last-writer-wins needs timestamps that (a) follow wall time closely, so
"last" means what an operator expects, and (b) never go backwards and always exceed every
timestamp this site has seen, so a write made after receiving a row always wins over it even
when the two wall clocks disagree. Packing (milliseconds << 16 | logical counter) keeps the
timestamp one SQLite INTEGER, compared by plain ``>``, and about nine bytes on the wire.

The wall clock is injected (``wall_ms``) so tests drive skew and time explicitly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def pack(ms: int, logical: int = 0) -> int:
    """An HLC value for wall time ``ms`` and logical counter ``logical``."""
    return (ms << LOGICAL_BITS) | (logical & LOGICAL_MASK)


def physical_ms(hlc: int) -> int:
    """The wall-clock part of an HLC value, in Unix milliseconds."""
    return hlc >> LOGICAL_BITS


def logical(hlc: int) -> int:
    return hlc & LOGICAL_MASK


def system_wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    """Issues strictly increasing HLC values and absorbs remote ones.

    ``max_ahead_ms`` bounds how far a remote timestamp may lead our wall clock: absorbing an
    unbounded future timestamp would drag every later local write into the future with it.
    Callers check :meth:`ahead_by` before :meth:`observe` and refuse what is too far ahead.
    """

    def __init__(
        self,
        wall_ms: Callable[[], int] = system_wall_ms,
        *,
        max_ahead_ms: int = 60_000,
        last: int = 0,
    ) -> None:
        self._wall_ms = wall_ms
        self.max_ahead_ms = max_ahead_ms
        self._last = last
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        """The highest HLC value issued or observed so far."""
        return self._last

    def wall_ms(self) -> int:
        return self._wall_ms()

    def now(self) -> int:
        """A new timestamp, greater than every timestamp issued or observed before."""
        with self._lock:
            self._last = max(pack(self._wall_ms()), self._last + 1)
            return self._last

    def ahead_by(self, remote: int) -> int:
        """How many ms ``remote`` leads our wall clock (negative when it is behind)."""
        return physical_ms(remote) - self._wall_ms()

    def too_far_ahead(self, remote: int) -> bool:
        return self.ahead_by(remote) > self.max_ahead_ms

    def observe(self, remote: int) -> None:
        """Absorb a remote timestamp so later local writes order after it."""
        with self._lock:
            self._last = max(self._last, remote)
