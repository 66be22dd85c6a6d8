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

The demand table holds at most ``max_devices`` devices per window. Offers of further devices
are counted together (``overflow``) and the level is computed for the counted devices on their
share of the budget (``budget * counted / (counted + overflow)``): exact when the uncounted
devices offer like the counted ones, and the global budget refuses whatever still overshoots.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


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

    def __init__(
        self, engage: float = 0.8, release: float = 0.6, max_devices: int = 10_000
    ) -> None:
        if not 0 < release <= engage <= 1:
            raise ValueError(f"need 0 < release <= engage <= 1, got {release=} {engage=}")
        if max_devices < 1:
            raise ValueError(f"max_devices must be at least 1, got {max_devices}")
        self._engage = engage
        self._release = release
        self.max_devices = max_devices
        self.demand: dict[str, int] | None = None
        """Per-device offered events this window while engaged; pass it to ``allow_batch``
        while :meth:`fits` says the batch cannot overflow it, else use :meth:`count`."""
        self.overflow = 0
        """Offers this window from devices the full demand table could not hold."""
        self.untracked = 0
        """Such offers since start (for the metrics)."""
        self.cap: float | None = None

    def fits(self, batch: int) -> bool:
        """Whether ``batch`` more devices fit the demand table whatever they are."""
        demand = self.demand
        return demand is not None and len(demand) + batch <= self.max_devices

    def count(self, keys: Sequence[str]) -> None:
        """Count a batch's offers when it may overflow the table (the bounded slow path)."""
        demand = self.demand
        if demand is None:
            return
        limit = self.max_devices
        overflow = 0
        for key in keys:
            count = demand.get(key)
            if count is not None:
                demand[key] = count + 1
            elif len(demand) < limit:
                demand[key] = 1
            else:
                overflow += 1
        self.overflow += overflow
        self.untracked += overflow

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
        overflow = self.overflow
        self.overflow = 0
        if demand is None:
            if refused > 0 or allowed >= self._engage * budget:
                self.demand = {}
            self.cap = None
            return None
        counted = sum(demand.values())
        share = budget * counted / (counted + overflow) if overflow else budget
        level = water_level(demand.values(), share)
        if level is None:
            self.cap = None
            if counted + overflow < self._release * budget:
                self.demand = None
                return None
        else:
            self.cap = max(level / window_s, 1e-6)
        self.demand = {}
        return self.cap
