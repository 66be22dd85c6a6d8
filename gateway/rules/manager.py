"""The pattern manager: rule documents in, one compiled rule set out, swapped atomically.

Why it is shaped this way:

- **Atomic swap.** A :class:`RuleSet` (the compiled :class:`~amcp.goldrush.situations.RuleEngine`
  plus each rule's actions) is immutable once built. It is built in a worker thread (parsing
  and compiling 1000 patterns takes ~100 ms: the event loop must keep ingesting meanwhile),
  then :meth:`PatternManager.swap` replaces one reference on the event loop. The ingest stage
  runs on the loop too, so every reading meets exactly one set, old or new, never half of one.
- **A bad rule never stops the others.** Each document is checked on its own; one that does
  not decode, parse or compile is *refused* (reported once per distinct document, to the cloud
  through the outbox) and its id keeps the last definition that compiled, if there was one. If
  the set as a whole cannot be built, the whole change is refused and the running set stays.
- **State survives swaps.** Pattern counters are carried by ``PatternSet.compile(carry=)``;
  windows and situations whose definition (and watched pattern) did not change keep their
  per-key history, so editing one rule does not reset the count of another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from amcp.goldrush import GoldrushError, parse
from amcp.goldrush.patternset import PatternStats
from amcp.goldrush.query import Cond, split_with
from amcp.goldrush.situations import RuleEngine, SituationSpec
from amcp.goldrush.windows import Clock, WindowSpec
from gateway.rules.model import (
    BUILTIN_ACTIONS,
    ActionRef,
    ActionSpec,
    KeyPath,
    PatternRule,
    Rule,
    SituationRule,
    WindowRule,
)

log = logging.getLogger(__name__)

Kind = Literal["pattern", "window", "situation"]


@dataclass(frozen=True)
class Sourced:
    """A rule document and where it came from (``store``, ``config`` or a file path)."""

    rule: Rule
    origin: str


@dataclass(frozen=True)
class Refusal:
    """A rule that was not taken, and why (what the ``rules.refused`` event carries)."""

    rule_id: str
    origin: str
    error: str
    kept_previous: bool = False
    line: int | None = None
    column: int | None = None


@dataclass(frozen=True)
class Entry:
    """What to do when a rule fires."""

    kind: Kind
    actions: tuple[ActionSpec, ...]
    cooldown_s: float
    key: KeyPath


@dataclass(frozen=True)
class RuleSet:
    """One compiled generation of rules; never changed after it is built."""

    engine: RuleEngine
    entries: dict[str, Entry]
    rules: dict[str, Rule]
    generation: int = 0

    def __len__(self) -> int:
        return len(self.entries)


class BuildRefusedError(Exception):
    """The rule set as a whole could not be built; the running set stays in place."""


@dataclass
class BuildResult:
    rules: RuleSet
    refused: list[Refusal] = field(default_factory=list)
    build_ms: float = 0.0
    swapped: bool = True
    """False when the documents compiled to the rules already running (nothing swapped)."""


@dataclass
class _Checked:
    patterns: dict[str, Cond] = field(default_factory=dict)
    windows: dict[str, WindowSpec] = field(default_factory=dict)
    situations: dict[str, SituationSpec] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    rules: dict[str, Rule] = field(default_factory=dict)


def _resolve(
    refs: list[ActionRef], names: tuple[str, ...], named: Mapping[str, ActionSpec]
) -> tuple[ActionSpec, ...]:
    out: list[ActionSpec] = []
    for ref in [*refs, *names]:
        if isinstance(ref, str):
            spec = named.get(ref) or BUILTIN_ACTIONS.get(ref)
            if spec is None:
                raise ValueError(f"unknown action {ref!r}")
            out.append(spec)
        else:
            out.append(ref)
    return tuple(out)


def _check(rid: str, rule: Rule, named: Mapping[str, ActionSpec], into: _Checked) -> None:
    """Validate one document on its own and add it to ``into``; raises on a bad one."""
    match rule:
        case PatternRule():
            query = parse(rule.when) if isinstance(rule.when, str) else rule.when
            cond, names = split_with(query)
            into.patterns[rid] = cond
            entry = Entry(
                "pattern", _resolve(rule.actions, names, named), rule.cooldown_s, ("device",)
            )
        case WindowRule():
            into.windows[rid] = WindowSpec(
                pattern=rule.pattern,
                count=rule.count,
                within_s=rule.within_s,
                key=rule.key,
                kind=rule.kind,
                max_keys=rule.max_keys,
            )
            entry = Entry("window", _resolve(rule.actions, (), named), rule.cooldown_s, rule.key)
        case SituationRule():
            parse(rule.when)  # fail here, with a position, rather than inside the build
            into.situations[rid] = SituationSpec(rule.when, rule.within_s, rule.key, rule.max_keys)
            entry = Entry("situation", _resolve(rule.actions, (), named), rule.cooldown_s, rule.key)
    into.entries[rid] = entry
    into.rules[rid] = rule


def _refusal(rid: str, origin: str, exc: Exception, kept: bool) -> Refusal:
    line = getattr(exc, "line", None)
    column = getattr(exc, "column", None)
    return Refusal(rid, origin, f"{type(exc).__name__}: {exc}", kept, line, column)


def _drop(checked: _Checked, rid: str) -> None:
    checked.patterns.pop(rid, None)
    checked.windows.pop(rid, None)
    checked.situations.pop(rid, None)
    checked.entries.pop(rid, None)
    checked.rules.pop(rid, None)


def _settle(
    checked: _Checked,
    docs: Mapping[str, Sourced],
    refuse: Callable[[str, Exception], None],
    clock: Clock,
    carry: RuleSet | None,
) -> RuleEngine:
    """Build the engine, refusing each rule the build names as bad, until it builds."""
    for _ in range(len(docs) + 1):
        for wid, spec in list(checked.windows.items()):
            if spec.pattern not in checked.patterns:
                refuse(wid, ValueError(f"window watches unknown pattern {spec.pattern!r}"))
        try:
            return RuleEngine.build(
                checked.patterns,
                windows=checked.windows,
                situations=checked.situations,
                clock=clock,
                carry=carry.engine.patterns if carry is not None else None,
            )
        except GoldrushError as exc:
            bad = exc.pattern_id
            if bad is None or bad not in checked.entries or bad not in docs:
                raise BuildRefusedError(str(exc)) from exc
            refuse(bad, exc)
        except Exception as exc:  # RecursionError, MemoryError, a bug: never half a set
            raise BuildRefusedError(f"{type(exc).__name__}: {exc}") from exc
    raise BuildRefusedError("rule set did not settle")  # pragma: no cover - each round drops one


def build_rules(
    docs: Mapping[str, Sourced],
    named: Mapping[str, ActionSpec],
    good: Mapping[str, Rule],
    *,
    clock: Clock,
    carry: RuleSet | None = None,
    generation: int = 0,
) -> BuildResult:
    """Check every document, compile what passes (blocking: run it in a worker thread).

    ``good`` is the last definition of each id that compiled: a refused document falls back
    to it. Raises :class:`BuildRefusedError` only when the set as a whole cannot be built.
    """
    start = time.perf_counter()
    checked = _Checked()
    refused: list[Refusal] = []

    fell_back: set[str] = set()

    def refuse(rid: str, exc: Exception) -> None:
        _drop(checked, rid)
        previous = good.get(rid)
        kept = False
        if previous is not None and previous != docs[rid].rule and rid not in fell_back:
            fell_back.add(rid)
            try:
                _check(rid, previous, named, checked)
                kept = True
            except (GoldrushError, ValueError):
                _drop(checked, rid)
        if rid in fell_back and not kept:  # the fallback itself failed: report it once
            refused[:] = [r for r in refused if r.rule_id != rid]
        refused.append(_refusal(rid, docs[rid].origin, exc, kept))

    for rid, src in docs.items():
        if not src.rule.enabled:
            continue
        try:
            _check(rid, src.rule, named, checked)
        except (GoldrushError, ValueError, RecursionError) as exc:
            refuse(rid, exc)
    engine = _settle(checked, docs, refuse, clock, carry)
    ruleset = RuleSet(engine, checked.entries, checked.rules, generation)
    return BuildResult(ruleset, refused, (time.perf_counter() - start) * 1000)


def carry_state(old: RuleSet, new: RuleSet) -> int:
    """Move counters, and window and situation history where nothing changed, to ``new``.

    Runs on the event loop at swap time, so no event is counted by the old set after its
    history moved. Returns how many windows kept their state.
    """
    # counters were carried when the build started, in another thread; the old set kept
    # counting since, so take them again now that it has stopped (exact, not approximate)
    old_ps, new_ps = old.engine.patterns, new.engine.patterns
    stats = new_ps._stats  # noqa: SLF001
    for pid, was in old_ps._stats.items():  # noqa: SLF001
        if pid in stats:
            stats[pid] = PatternStats(
                was.matched,
                was.action_runs,
                was.action_ns,
                was.action_errors,
                input_before=was.input_before + old_ps.input - was.input_mark,
                input_mark=new_ps.input,
            )
    kept = 0
    for wid, win in new.engine.windows.items():
        prev = old.engine.windows.get(wid)
        watched = win.spec.pattern
        if (
            prev is not None
            and prev.spec == win.spec
            and old.rules.get(watched) == new.rules.get(watched)
        ):
            # the engine has no public hand-over of window state yet (asked of #8)
            win._sliding = prev._sliding  # noqa: SLF001
            win._tumbling = prev._tumbling  # noqa: SLF001
            win.fired, win.evicted = prev.fired, prev.evicted
            kept += 1
    if new.engine.situations and new.engine.situations == old.engine.situations:
        new.engine._facts = old.engine._facts  # noqa: SLF001
        new.engine._holding = old.engine._holding  # noqa: SLF001
    return kept


def empty_rules(clock: Clock) -> RuleSet:
    return RuleSet(RuleEngine.build({}, clock=clock), {}, {}, 0)


class PatternManager:
    """Holds the running :class:`RuleSet` and replaces it, whole, when documents change."""

    def __init__(
        self, named: Mapping[str, ActionSpec], clock: Clock, *, carry: bool = True
    ) -> None:
        self.named = dict(named)
        self.clock = clock
        self.carry = carry
        self.active = empty_rules(clock)
        self.good: dict[str, Rule] = {}
        self.swaps = 0
        self.refusals = 0
        self._reported: dict[str, Rule] = {}

    async def apply(
        self, docs: Mapping[str, Sourced], named: Mapping[str, ActionSpec] | None = None
    ) -> tuple[BuildResult, list[Refusal]]:
        """Build a set from ``docs`` in a worker thread and swap it in.

        Returns the build and the refusals not reported before (one report per distinct
        document, so a bad row left in the store is not reported on every rebuild).
        Raises :class:`BuildRefusedError` (the running set stays).
        """
        old_named = self.named
        if named is not None:
            self.named = dict(named)
        old = self.active
        result = await asyncio.to_thread(
            build_rules,
            dict(docs),
            self.named,
            dict(self.good),
            clock=self.clock,
            carry=old if self.carry else None,
            generation=old.generation + 1,
        )
        if old.generation and result.rules.rules == old.rules and self.named == old_named:
            result.rules, result.swapped = old, False  # same rules: the running set stays
        else:
            self.swap(result.rules)
        refused_now = {r.rule_id for r in result.refused}
        for rid, rule in result.rules.rules.items():
            if rid not in refused_now:
                self.good[rid] = rule
        for rid in [r for r in self.good if r not in docs]:
            del self.good[rid]  # deleted rules do not come back as a fallback
        fresh = []
        for refusal in result.refused:
            doc = docs[refusal.rule_id].rule
            if self._reported.get(refusal.rule_id) != doc:
                self._reported[refusal.rule_id] = doc
                fresh.append(refusal)
        for rid in [r for r in self._reported if r not in refused_now]:
            del self._reported[rid]
        self.refusals += len(fresh)
        return result, fresh

    def swap(self, new: RuleSet) -> None:
        """Make ``new`` the running set (call on the event loop, between two events)."""
        if self.carry:
            carry_state(self.active, new)
        self.active = new
        self.swaps += 1
