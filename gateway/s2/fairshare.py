"""Max-min fair sharing of the gateway-wide budget between devices.

Each device already has its own limit; the budget is what the gateway as a whole can carry
(the outbox, the uplink). When the offered load exceeds the budget, first-come-first-served
would hand it to whoever sends fastest. Max-min fairness instead finds the *water level* L:
every device asking for less than L gets all it asks for, every device asking for more gets L.
Because all the capped devices share one level, L is a single per-key cap on the device
limiter, so the hot loop stays one float comparison per reading.

Counting demand per device costs a dictionary write per reading, so it runs only while the
budget is under pressure: it is switched on when a window used ``engage`` of the budget (or
the budget refused anything), and off again once the offered load falls below ``release``.
"""

from __future__ import annotations

from collections.abc import Iterable


def water_level(demands: Iterable[float], capacity: float) -> float | None:
    """The max-min fair level for ``demands`` sharing ``capacity``; ``None`` when all fit.

    The level L is the largest value with ``sum(min(d, L) for d in demands) <= capacity``.
    """
    ordered = sorted(demands)
    if sum(ordered) <= capacity:
        return None
    remaining = capacity
    count = len(ordered)
    for i, demand in enumerate(ordered):
        share = remaining / (count - i)
        if demand > share:
            return share
        remaining -= demand
    return None  # pragma: no cover - unreachable when the sum exceeds capacity


class FairShare:
    """Turns per-window demand into a per-device rate cap (events per second) or ``None``."""

    def __init__(self, engage: float = 0.8, release: float = 0.6) -> None:
        if not 0 < release <= engage <= 1:
            raise ValueError(f"need 0 < release <= engage <= 1, got {release=} {engage=}")
        self._engage = engage
        self._release = release
        self.demand: dict[str, int] | None = None
        """Per-device offered events this window while engaged; pass it to ``allow_batch``."""
        self.cap: float | None = None

    @property
    def engaged(self) -> bool:
        return self.demand is not None

    def update(self, window_s: float, capacity: float, allowed: int, refused: int) -> float | None:
        """Close a window of ``window_s`` seconds and return the cap for the next one.

        ``capacity`` is the budget in events per second; ``allowed`` is how many events the
        device limiter passed this window and ``refused`` how many the budget turned away.
        """
        budget = capacity * window_s
        demand = self.demand
        if demand is None:
            if refused > 0 or allowed >= self._engage * budget:
                self.demand = {}
            self.cap = None
            return None
        level = water_level(demand.values(), budget)
        if level is None:
            self.cap = None
            if sum(demand.values()) < self._release * budget:
                self.demand = None
                return None
        else:
            self.cap = max(level / window_s, 1e-6)
        self.demand = {}
        return self.cap
