"""Situations (patterns over what other patterns found) and the engine that runs it all.

A *fact* is the id of a pattern, window or situation that fired, remembered per key (by
default per ``device``) for ``within_s`` seconds. A situation is an ordinary pattern, in
the same language, evaluated over a fact event::

    {"key": "pump-7", "fired": {"overheat": 12.5, "fan_stalled": 3.0}}

where each value is the fact's age in seconds. ``exists(fired.overheat) and
exists(fired.fan_stalled)`` is "both happened within the horizon"; ``fired.overheat < 10``
narrows it. Situations may use other situations' facts (hierarchies); they are evaluated
again until nothing new fires, at most ``MAX_LEVELS`` rounds, so a cycle cannot spin.

A situation fires on the transition from not holding to holding for a key, and re-arms
when it stops holding: several facts making one situation raise it once, not on every
event while it lasts.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import msgspec

from amcp.goldrush import semantics as sem
from amcp.goldrush.errors import QueryError
from amcp.goldrush.patternset import Action, PatternSet
from amcp.goldrush.query import Query
from amcp.goldrush.windows import Clock, Window, WindowSpec

MAX_LEVELS = 8


class SituationSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The stored form of a situation."""

    when: str
    """A pattern over ``fired.<fact id>`` (ages in seconds) and ``key``."""
    within_s: float = 300.0
    """How long a fact counts after it fired."""
    key: tuple[str, ...] = ("device",)
    max_keys: int = 10_000


class _Facts:
    """Fact id → last time it fired, per key; bounded like window state."""

    def __init__(self, max_keys: int, forget_after: float) -> None:
        self.max_keys = max_keys
        self.forget_after = forget_after
        self.by_key: OrderedDict[Any, dict[str, float]] = OrderedDict()
        self.evicted = 0

    def add(self, key: Any, fact: str, t: float) -> None:
        facts = self.by_key.get(key)
        if facts is None:
            facts = self.by_key[key] = {}
            while len(self.by_key) > self.max_keys:
                self.by_key.popitem(last=False)
                self.evicted += 1
        else:
            self.by_key.move_to_end(key)
        facts[fact] = t

    def view(self, key: Any, t: float, horizon: float) -> dict[str, Any]:
        facts = self.by_key.get(key, {})
        for fid in [f for f, at in facts.items() if t - at >= self.forget_after]:
            del facts[fid]  # forget facts no situation can see any more
        return {"key": key, "fired": {f: t - at for f, at in facts.items() if t - at < horizon}}


def _key_of(event: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value = sem.lookup(event, path)
    if value is sem.MISSING:
        return None
    try:
        hash(value)
    except TypeError:
        return None
    return ("bool", value) if value.__class__ is bool else value


class _Group:
    """Situations sharing a key path and a horizon: one compiled set, one fact view."""

    def __init__(
        self, path: tuple[str, ...], within_s: float, specs: dict[str, SituationSpec]
    ) -> None:
        self.path = path
        self.within_s = within_s
        self.ids = set(specs)
        self.rules = PatternSet.compile({sid: spec.when for sid, spec in specs.items()})


class RuleEngine:
    """Patterns, windows over them and situations over both, run on each event."""

    def __init__(
        self,
        patterns: PatternSet,
        windows: Mapping[str, WindowSpec],
        situations: Mapping[str, SituationSpec],
        clock: Clock,
    ) -> None:
        self.patterns = patterns
        self.clock = clock
        self.windows = {wid: Window(spec, clock) for wid, spec in windows.items()}
        self._watch: dict[str, list[tuple[str, Window]]] = {}
        for wid, win in self.windows.items():
            self._watch.setdefault(win.spec.pattern, []).append((wid, win))
        self.situations = dict(situations)
        grouped: dict[tuple[tuple[str, ...], float], dict[str, SituationSpec]] = {}
        for sid, spec in situations.items():
            grouped.setdefault((spec.key, spec.within_s), {})[sid] = spec
        self._groups = [_Group(path, w, specs) for (path, w), specs in grouped.items()]
        self._facts = {
            path: _Facts(
                max(s.max_keys for s in situations.values() if s.key == path),
                max(s.within_s for s in situations.values() if s.key == path),
            )
            for path in {s.key for s in situations.values()}
        }
        self._holding: set[tuple[Any, str]] = set()

    @classmethod
    def build(
        cls,
        patterns: Mapping[str, Query | str],
        *,
        windows: Mapping[str, WindowSpec] | None = None,
        situations: Mapping[str, SituationSpec] | None = None,
        actions: Mapping[str, Action] | None = None,
        clock: Clock = time.monotonic,
        carry: PatternSet | None = None,
    ) -> RuleEngine:
        """Compile everything. A window on an unknown pattern, or an id used twice, raises
        :class:`QueryError`; a bad situation raises like a bad pattern."""
        windows = windows or {}
        situations = situations or {}
        pattern_set = PatternSet.compile(patterns, actions, carry=carry)
        for wid, spec in windows.items():
            if spec.pattern not in pattern_set:
                raise QueryError(f"window watches unknown pattern {spec.pattern!r}", wid)
        ids = [*patterns, *windows, *situations]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise QueryError(f"ids used twice: {', '.join(twice)}")
        return cls(pattern_set, windows, situations, clock)

    def process(self, event: Mapping[str, Any]) -> list[str]:
        """Match ``event``; returns the ids of patterns, windows and situations that fired."""
        fired = self.patterns.handle(event)
        if not fired or not (self._watch or self._groups):
            return fired
        now = self.clock()
        out = list(fired)
        for pid in fired:
            for wid, win in self._watch.get(pid, ()):
                if win.observe(event, now):
                    out.append(wid)
        if self._groups:
            out += self._situate(event, out, now)
        return out

    def _situate(self, event: Mapping[str, Any], new: list[str], now: float) -> list[str]:
        keys = {path: _key_of(event, path) for path in self._facts}
        raised: list[str] = []
        for _ in range(MAX_LEVELS):
            for path, key in keys.items():
                for fact in new:
                    self._facts[path].add(key, fact, now)
            new = []
            for group in self._groups:
                key = keys[group.path]
                view = self._facts[group.path].view(key, now, group.within_s)
                holding = set(group.rules.match(view))
                for sid in group.ids:
                    if sid not in holding:
                        self._holding.discard((key, sid))  # re-arm
                    elif (key, sid) not in self._holding:
                        self._holding.add((key, sid))
                        new.append(sid)
            if not new:
                break
            raised += new
        return raised
