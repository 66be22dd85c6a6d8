"""Counts over time: "3 times within 60 s per device", sliding or tumbling.

A window watches one pattern of a :class:`PatternSet` and fires when that pattern matched
``count`` times within ``within_s`` seconds for the same key (by default the ``device``
field). Time comes from an injectable clock (``time.monotonic`` by default; tests pass a
manual clock), so window boundaries are exact and testable.

- **sliding**: the last ``count`` match times are kept per key; the window fires when the
  oldest of them is less than ``within_s`` before now (the window is ``(now - W, now]``).
  After firing the key's history is cleared, so a storm fires once per ``count`` matches,
  not on every match after the ``count``-th.
- **tumbling**: time is cut into ``[k·W, (k+1)·W)`` slots; the count restarts in each slot
  and the window fires exactly once in a slot, on its ``count``-th match.

Memory is bounded: at most ``count`` timestamps per key and at most ``max_keys`` keys per
window; the least recently seen key is evicted first (``evicted`` counts them). An event
whose key field is missing uses the key ``None``; an unhashable key is not counted.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec

from amcp.goldrush import semantics as sem

Clock = Callable[[], float]


class WindowSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The stored form of a window (synced like a pattern)."""

    pattern: str
    """Id of the pattern whose matches are counted."""
    count: int
    within_s: float
    key: tuple[str, ...] = ("device",)
    kind: Literal["sliding", "tumbling"] = "sliding"
    max_keys: int = 10_000

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")
        if not (self.within_s > 0 and math.isfinite(self.within_s)):
            raise ValueError(f"within_s must be a positive number, got {self.within_s}")
        if self.max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {self.max_keys}")


class Window:
    """The running state of one window."""

    def __init__(self, spec: WindowSpec, clock: Clock = time.monotonic) -> None:
        self.spec = spec
        self.clock = clock
        self.fired = 0
        self.evicted = 0
        self._sliding: OrderedDict[Any, deque[float]] = OrderedDict()
        self._tumbling: OrderedDict[Any, list[float]] = OrderedDict()  # key -> [slot, count]

    def __len__(self) -> int:
        return len(self._sliding) + len(self._tumbling)

    def _key(self, event: Mapping[str, Any]) -> Any:
        path = self.spec.key
        value = event.get(path[0], sem.MISSING) if len(path) == 1 else sem.lookup(event, path)
        if value is sem.MISSING:
            return None
        if value.__class__ is bool:  # keep True apart from 1
            return ("bool", value)
        return value

    def observe(self, event: Mapping[str, Any], now: float | None = None) -> bool:
        """Record one match of the watched pattern; True when the window fires."""
        key = self._key(event)
        try:
            hash(key)
        except TypeError:
            return False
        t = self.clock() if now is None else now
        spec = self.spec
        fired = self._slide(key, t) if spec.kind == "sliding" else self._tumble(key, t)
        if fired:
            self.fired += 1
        return fired

    def _slide(self, key: Any, t: float) -> bool:
        states = self._sliding
        times = states.get(key)
        if times is None:
            times = deque(maxlen=self.spec.count)
            states[key] = times
            self._bound(states)
        else:
            states.move_to_end(key)
        times.append(t)
        if len(times) == self.spec.count and times[0] > t - self.spec.within_s:
            times.clear()
            return True
        return False

    def _tumble(self, key: Any, t: float) -> bool:
        states = self._tumbling
        slot = math.floor(t / self.spec.within_s)
        state = states.get(key)
        if state is None or state[0] != slot:
            state = [slot, 0]
            states[key] = state
            self._bound(states)
        states.move_to_end(key)
        state[1] += 1
        return state[1] == self.spec.count

    def _bound(self, states: OrderedDict[Any, Any]) -> None:
        while len(states) > self.spec.max_keys:
            states.popitem(last=False)
            self.evicted += 1
