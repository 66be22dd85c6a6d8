"""GoldRush in the running gateway: the ingest stage, the rule sources, and the actions.

- :meth:`RulesService.stage` is an ingest :class:`~gateway.hooks.IngestObserver`: after the
  commit it offers every stored reading to the running rule set and submits the actions of
  what fired.
- :meth:`RulesService.run` is a supervised child: it builds the first set, then rebuilds
  when the store's ``patterns`` namespace changes (the cloud's rows arrive there through
  sync), when a patterns file changes, or when :meth:`RulesService.reload` is called
  (SIGHUP); and it runs the actions (:class:`~gateway.rules.actions.ActionRunner`).

Rule sources, later ones overriding earlier ones with the same id: the ``[rules]`` config
section, then the patterns files in order, then the store's ``patterns`` rows (the gateway's
own, written by ``cybernetic patterns add``), then the cloud's ``pattern.fleet`` rows meant
for this gateway (key ``<target>/<id>``, ``amcp.fleet``): per id the most specific one
(``gw/<id>`` over ``zone/<its zone>`` over ``all``), its zone being its ``zones`` row when
there is one, else ``[gateway] zone`` (docs/rules.md, "Patterns from the cloud").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from amcp.fleet import FLEET_PATTERNS, ZONES, RowError, decode_zone, parse_pattern_key
from amcp.goldrush.semantics import event_from_reading
from amcp.goldrush.semantics import lookup as lookup_path
from amcp.runtime.session import Transport
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.store import Change, Store, StoreError
from amcp.wire.telemetry import EventRecord, Reading
from gateway.rules.actions import ActionRunner, AppendEvents, Capability, Invoke, SendCommand
from gateway.rules.manager import BuildRefusedError, PatternManager, Refusal, Sourced
from gateway.rules.model import ActionSpec, RuleFile, RuleFileError, decode_rule, load_rule_file
from gateway.rules.settings import RulesSettings

log = logging.getLogger(__name__)

__all__ = ["RulesService", "RulesSettings"]

_COOLDOWN_KEYS = 100_000


def _now_ms() -> int:
    return int(time.time() * 1000)


class RulesService:
    def __init__(
        self,
        config: RulesSettings,
        store: Store | None,
        append_events: AppendEvents,
        *,
        gateway: str,
        zone: str = "default",
        local_broker: BrokerLink | None = None,
        capabilities: Mapping[str, Capability] | None = None,
        invoke: Invoke | None = None,
        command: SendCommand | None = None,
        wall: Callable[[], float] = time.time,
        transport: Transport | None = None,
    ) -> None:
        """``append_events`` is ``Outbox.append_events``; ``store`` must be open by the time
        :meth:`run` starts (the gateway's shared store, so sync's writes notify us); ``zone``
        is ``[gateway] zone``, used while no ``zones`` row names this gateway's zone."""
        self.settings = config
        self.store = store
        self.gateway = gateway
        self.configured_zone = zone
        self.zone = zone
        """The zone whose ``pattern.fleet`` rows apply (the ``zones`` row's, else config)."""
        self._wall = wall
        self._now = 0.0
        self.manager = PatternManager(config.actions, lambda: self._now, carry=config.carry_state)
        self.runner = ActionRunner(
            config,
            append_events,
            gateway=gateway,
            local_broker=local_broker,
            capabilities=capabilities,
            invoke=invoke,
            transport=transport,
            command=command,
        )
        self.fired: Counter[str] = Counter()
        """Rule id → times it fired, kept across swaps."""
        self.suppressed = 0
        """Firings whose actions rested in their rule's cooldown."""
        self.errors = 0
        self._cooldown: dict[tuple[str, Any], float] = {}
        self._dirty = asyncio.Event()
        self._files: dict[str, tuple[int, int] | None] = {}
        self._file_rules: dict[str, RuleFile] = {}
        self._bad_rows: dict[str, bytes] = {}
        self._loaded: tuple[dict[str, Sourced], dict[str, ActionSpec]] | None = None
        self._unsubscribe: list[Callable[[], None]] | None = None
        self._swapped = asyncio.Event()

    def register_capability(self, name: str, fn: Capability) -> None:
        """The hook S1 uses to make a capability callable from rules (``capability`` action)."""
        self.runner.register_capability(name, fn)

    # -- ingest stage ---------------------------------------------------------------------
    def stage(self, readings: list[Reading]) -> list[Reading]:
        if not readings or not self.settings.enabled:
            return readings
        rules = self.manager.active  # one reference: the whole batch meets one set
        engine = rules.engine
        event_time = self.settings.time == "event"
        for reading in readings:
            event = event_from_reading(reading)
            stamp = reading.ts_ms if event_time else reading.received_ms
            self._now = stamp / 1000 if stamp else self._wall()
            try:
                fired = engine.process(event)
            except Exception:  # the engine never raises on data; if it does, ingest goes on
                self.errors += 1
                if self.errors == 1:
                    log.exception("rule evaluation failed", extra={"device": reading.device})
                continue
            for rid in fired:
                self.fired[rid] += 1
                entry = rules.entries.get(rid)
                if entry is None or not entry.actions:
                    continue
                if entry.cooldown_s and self._resting(rid, entry.key, entry.cooldown_s, event):
                    self.suppressed += 1
                    continue
                self.runner.submit(rid, entry, event)
        return readings

    def _resting(
        self, rid: str, path: tuple[str, ...], cooldown: float, event: Mapping[str, Any]
    ) -> bool:
        key = lookup_path(event, path)
        try:
            slot = (rid, key)
            hash(slot)
        except TypeError:
            return False
        last = self._cooldown.get(slot)
        if last is not None and self._now - last < cooldown:
            return True
        if len(self._cooldown) >= _COOLDOWN_KEYS:
            self._cooldown.clear()  # bounded memory; at worst one early repeat per key
        self._cooldown[slot] = self._now
        return False

    # -- running --------------------------------------------------------------------------
    async def run(self, ctx: ChildContext) -> None:
        try:
            await self.refresh(force=True)
            ctx.ready()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.runner.run(), name="rules-actions")
                tg.create_task(self._watch(), name="rules-watch")
        finally:
            for unsubscribe in self._unsubscribe or ():
                unsubscribe()
            self._unsubscribe = None

    def reload(self) -> None:
        """Re-read every source now (the gateway calls this on SIGHUP)."""
        self._dirty.set()

    async def wait_swap(self) -> None:
        """Wait for the next swap (tests and tools)."""
        self._swapped.clear()
        await self._swapped.wait()

    def _subscribe(self) -> None:
        if self.store is None or self._unsubscribe is not None:
            return
        loop = asyncio.get_running_loop()
        done: list[Callable[[], None]] = []
        try:
            for ns in (self.settings.namespace, FLEET_PATTERNS, ZONES):
                done.append(self.store.subscribe(ns, self._on_change, loop=loop))  # noqa: PERF401
        except StoreError as exc:
            for unsubscribe in done:
                unsubscribe()
            log.warning("rules: store not open yet", extra={"error": str(exc)})
            return
        self._unsubscribe = done

    def _on_change(self, _changes: list[Change]) -> None:
        self._dirty.set()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.settings.poll_interval)
            self._subscribe()
            if self._dirty.is_set() or await asyncio.to_thread(self._files_changed):
                self._dirty.clear()
                await self.refresh()

    def _files_changed(self) -> bool:
        changed = False
        for name in self.settings.files:
            try:
                st = Path(name).stat()
                mark: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except OSError:
                mark = None
            if self._files.get(name, (-1, -1)) != mark:
                self._files[name] = mark
                changed = True
        return changed

    async def refresh(self, *, force: bool = False) -> bool:
        """Collect the documents of every source; rebuild and swap if they changed."""
        self._subscribe()
        docs, named = await self._collect()
        if not force and self._loaded == (docs, named):
            return False
        self._loaded = (docs, named)
        try:
            result, refused = await self.manager.apply(docs, named)
        except BuildRefusedError as exc:
            log.exception("rule set refused; the running set stays")
            self.runner.report(self._refused(Refusal("*", "set", str(exc), kept_previous=True)))
            return False
        for refusal in refused:
            log.warning("rule refused", extra={"rule": refusal.rule_id, "error": refusal.error})
            self.runner.report(self._refused(refusal))
        if not result.swapped:
            return False
        eng = result.rules.engine
        attrs = {
            "generation": result.rules.generation,
            "patterns": len(eng.patterns),
            "windows": len(eng.windows),
            "situations": len(eng.situations),
            "refused": len(result.refused),
            "build_ms": round(result.build_ms, 2),
        }
        log.info("rule set swapped", extra=attrs)
        if result.rules.generation > 1 or len(eng.patterns) or result.refused:
            # the cloud hears of every change, but not of an empty rule set at start-up
            self.runner.report(EventRecord("rules.swapped", _now_ms(), "rules", "info", attrs))
        self._swapped.set()
        return True

    def _refused(self, refusal: Refusal) -> EventRecord:
        attrs = {k: v for k, v in dataclasses.asdict(refusal).items() if v is not None}
        attrs["rule"] = attrs.pop("rule_id")
        return EventRecord("rules.refused", _now_ms(), refusal.rule_id, "error", attrs)

    async def _collect(self) -> tuple[dict[str, Sourced], dict[str, ActionSpec]]:
        s = self.settings
        docs: dict[str, Sourced] = {}
        named: dict[str, ActionSpec] = dict(s.actions)
        for rid, rule in s.inline().rules().items():
            docs[rid] = Sourced(rule, "config")
        for name in s.files:
            try:
                self._file_rules[name] = await asyncio.to_thread(load_rule_file, Path(name))
            except RuleFileError as exc:  # keep what the file held when it last read well
                self._report_bad(name, str(exc).encode(), f"file: {exc}", name)
            found = self._file_rules.get(name)
            if found is None:
                continue
            named |= found.actions
            try:
                docs |= {rid: Sourced(rule, name) for rid, rule in found.rules().items()}
            except RuleFileError as exc:
                self._report_bad(name, str(exc).encode(), str(exc), name)
        if self.store is not None:
            try:
                rows = await self.store.items(s.namespace)
            except StoreError as exc:
                log.warning("rules: store unreadable", extra={"error": str(exc)})
                rows = {}
                if self._loaded is not None:  # keep what the store held before
                    docs |= {k: v for k, v in self._loaded[0].items() if _from_store(v)}
            for key, value in rows.items():
                self._take(docs, key, value, "store")
            await self._fleet(self.store, docs)
        return docs, named

    def _take(
        self, docs: dict[str, Sourced], rid: str, value: bytes, origin: str, slot: str = ""
    ) -> None:
        """Decode one stored document into ``docs``; a bad one is reported and the id keeps
        the definition that last compiled."""
        try:
            docs[rid] = Sourced(decode_rule(value), origin)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 too
            self._report_bad(rid, value, f"{type(exc).__name__}: {exc}", origin, slot)
            good = self.manager.good.get(rid)
            if good is not None:
                docs[rid] = Sourced(good, origin)

    async def _fleet(self, store: Store, docs: dict[str, Sourced]) -> None:
        """Add the ``pattern.fleet`` rows meant for this gateway, the most specific per id,
        over the local ones of the same id."""
        try:
            zone_row = await store.get(ZONES, self.gateway)
            rows = await store.items(FLEET_PATTERNS)
        except StoreError as exc:
            log.warning("rules: store unreadable", extra={"error": str(exc)})
            return
        self.zone = self._zone(zone_row)
        chosen: dict[str, tuple[int, str, bytes]] = {}
        for key, value in rows.items():
            try:
                parsed = parse_pattern_key(key)
            except RowError as exc:
                self._report_bad(key, value, str(exc), "fleet", f"{FLEET_PATTERNS}:{key}")
                continue
            if not parsed.target.includes(self.gateway, self.zone):
                continue
            rank = parsed.target.rank
            if parsed.rule not in chosen or rank > chosen[parsed.rule][0]:
                chosen[parsed.rule] = (rank, key, value)
        for rid, (_, key, value) in chosen.items():
            self._take(docs, rid, value, f"fleet:{key}", f"{FLEET_PATTERNS}:{key}")

    def _zone(self, raw: bytes | None) -> str:
        if raw is None:
            return self.configured_zone
        try:
            return decode_zone(raw).zone
        except RowError:  # the limits worker reports the bad row; we stay where we were
            return self.zone

    def _report_bad(self, rid: str, raw: bytes, error: str, origin: str, slot: str = "") -> None:
        slot = slot or rid
        if self._bad_rows.get(slot) == raw:
            return
        self._bad_rows[slot] = raw
        kept = rid in self.manager.good or rid in self._file_rules
        refusal = Refusal(rid, origin, error, kept_previous=kept)
        log.warning("rule document refused", extra={"rule": rid, "error": error})
        self.manager.refusals += 1
        self.runner.report(self._refused(refusal))

    # -- metrics --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Counts for metrics and ``status``."""
        active = self.manager.active
        return {
            "generation": active.generation,
            "rules": len(active),
            "swaps": self.manager.swaps,
            "refusals": self.manager.refusals,
            "fired": dict(self.fired),
            "suppressed": self.suppressed,
            "errors": self.errors,
            "actions": {f"{k}.{o}": n for (k, o), n in self.runner.counts.items()},
            "queued": self.runner.records.qsize() + self.runner.jobs.qsize(),
        }


def _from_store(doc: Sourced) -> bool:
    return doc.origin == "store" or doc.origin.startswith("fleet:")
