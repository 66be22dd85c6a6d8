"""A compiled, indexed set of named patterns: what the gateway calls per event.

Building a set parses, reduces, indexes and compiles every pattern in one go; a set never
changes afterwards, so the gateway replaces its rules by swapping one reference between two
events (a half-built set is never visible). Counters can be carried from the set being
replaced so a pattern that survives a swap keeps its history.

Counters per pattern (goldrush keeps ``input``/``filter``/``output`` per query module):
``input`` (events offered to the set since the pattern joined), ``matched``, ``action_runs``,
``action_ns`` (time spent in its actions) and ``action_errors``. ``input`` is derived from
one set-wide count, so counting costs nothing per pattern that did not match.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from amcp.goldrush import codegen
from amcp.goldrush.errors import GoldrushError, QueryError
from amcp.goldrush.index import LEAF_SIZE, Item, NodeFn, build
from amcp.goldrush.parse import parse
from amcp.goldrush.query import Cond, Null, Query, encode, split_with
from amcp.goldrush.reduce import reduce_cond

log = logging.getLogger(__name__)

Event = Mapping[str, Any]
Action = Callable[[Event, str], object]
"""Called as ``action(event, pattern_id)`` after a match; its result is ignored."""


@dataclass
class PatternStats:
    """Mutable counters of one pattern."""

    matched: int = 0
    action_runs: int = 0
    action_ns: int = 0
    action_errors: int = 0
    input_before: int = 0
    """Input seen in earlier sets (carried across swaps)."""
    input_mark: int = 0
    """The set's input count when this pattern joined it."""


@dataclass(frozen=True)
class Counters:
    """A snapshot of one pattern's counters."""

    input: int
    matched: int
    filtered: int
    action_runs: int
    action_ms: float
    action_errors: int


@dataclass(frozen=True)
class CompiledPattern:
    pattern_id: str
    query: Query
    """As given (parsed when given as text)."""
    reduced: Cond
    actions: tuple[str, ...]
    source: str | bytes
    """The text, or the JSON encoding of the AST, it was built from (to spot unchanged ones)."""


class PatternSet:
    """Immutable once built; :meth:`match` and :meth:`handle` are the hot path."""

    def __init__(
        self,
        patterns: dict[str, CompiledPattern],
        root: NodeFn | None,
        actions: dict[str, tuple[Action, ...]],
        stats: dict[str, PatternStats],
    ) -> None:
        self.patterns = patterns
        self._root = root
        self._actions = actions
        self._stats = stats
        self.input = 0
        self._warned: set[str] = set()

    @classmethod
    def compile(
        cls,
        patterns: Mapping[str, Query | str],
        actions: Mapping[str, Action] | None = None,
        *,
        carry: PatternSet | None = None,
        leaf_size: int = LEAF_SIZE,
    ) -> PatternSet:
        """Build a set from pattern id → query (AST or text).

        Raises :class:`ParseError` or :class:`QueryError` (with ``pattern_id`` set) for the
        first bad pattern; nothing is built then, so the caller keeps its previous set.
        ``carry`` copies the counters of patterns that are also in that set and reuses the
        reduction of those whose text or AST is unchanged. ``leaf_size``
        tunes the index (tests use 1 to force every split).
        """
        actions = actions or {}
        compiled: dict[str, CompiledPattern] = {}
        items: list[Item] = []
        bound: dict[str, tuple[Action, ...]] = {}
        previous = carry.patterns if carry is not None else {}
        for pid, given in patterns.items():
            try:
                source = given if isinstance(given, str) else encode(given)
                prior = previous.get(pid)
                if prior is not None and prior.source == source:  # unchanged: reuse reduction
                    query, reduced = prior.query, prior.reduced
                else:
                    query = parse(given) if isinstance(given, str) else given
                    reduced = reduce_cond(split_with(query)[0])
                names = split_with(query)[1]
                unknown = [n for n in names if n not in actions]
                if unknown:
                    raise QueryError(f"unknown action(s) {', '.join(unknown)}", pid)
            except GoldrushError as exc:
                exc.pattern_id = pid
                raise
            compiled[pid] = CompiledPattern(pid, query, reduced, names, source)
            if names:
                bound[pid] = tuple(actions[n] for n in names)
            if not (isinstance(reduced, Null) and not reduced.value):
                items.append((pid, codegen.conjuncts(reduced)))
        try:
            root = build(items, leaf_size) if items else None
        except GoldrushError:
            raise
        except (SyntaxError, RecursionError, MemoryError) as exc:  # pragma: no cover
            raise QueryError(f"pattern set does not compile: {exc}") from exc
        stats: dict[str, PatternStats] = {}
        for pid in compiled:
            old = carry._stats.get(pid) if carry is not None else None  # noqa: SLF001
            if old is not None and carry is not None:
                stats[pid] = PatternStats(
                    old.matched,
                    old.action_runs,
                    old.action_ns,
                    old.action_errors,
                    input_before=old.input_before + carry.input - old.input_mark,
                )
            else:
                stats[pid] = PatternStats()
        return cls(compiled, root, bound, stats)

    def __len__(self) -> int:
        return len(self.patterns)

    def __contains__(self, pattern_id: object) -> bool:
        return pattern_id in self.patterns

    def match(self, event: Event) -> list[str]:
        """Ids of the patterns that match ``event`` (in no particular order); counts them."""
        out: list[str] = []
        root = self._root
        if root is not None:
            root(event, out)
        self.input += 1
        if out:
            stats = self._stats
            for pid in out:
                stats[pid].matched += 1
        return out

    def handle(self, event: Event) -> list[str]:
        """:meth:`match`, then run the actions of every matching pattern.

        A failing action is counted (and logged once per pattern); it never stops the other
        actions or later events.
        """
        matched = self.match(event)
        for pid in matched:
            acts = self._actions.get(pid)
            if acts:
                self._run(pid, acts, event)
        return matched

    def _run(self, pid: str, acts: tuple[Action, ...], event: Event) -> None:
        st = self._stats[pid]
        for act in acts:
            start = time.perf_counter_ns()
            try:
                act(event, pid)
            except Exception:
                st.action_errors += 1
                if pid not in self._warned:
                    self._warned.add(pid)
                    log.exception("action of pattern failed", extra={"pattern": pid})
            finally:
                st.action_runs += 1
                st.action_ns += time.perf_counter_ns() - start

    def counters(self, pattern_id: str) -> Counters:
        """The counters of one pattern (``KeyError`` if it is not in the set)."""
        st = self._stats[pattern_id]
        seen = st.input_before + self.input - st.input_mark
        return Counters(
            input=seen,
            matched=st.matched,
            filtered=seen - st.matched,
            action_runs=st.action_runs,
            action_ms=st.action_ns / 1e6,
            action_errors=st.action_errors,
        )
