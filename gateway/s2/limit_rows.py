"""Limits from the cloud: the ``limits`` rows of the gateway's store applied to the rate gate.

The cloud writes ``limits`` rows (``cloud.authoring``; formats in :mod:`amcp.fleet`) and sync
brings every one of them to every gateway. :class:`LimitRows`, a supervised child, picks the
rows meant for this gateway (``all/``, ``zone/<its zone>/``, ``gw/<its id>/``) and keeps the
:class:`~gateway.s2.admission.RateGate` in step with them, live:

- per (scope, name) the most specific row wins (``gw`` over ``zone`` over ``all``), and it
  replaces whatever ``[s2.limits]`` says for that key (an override or the scope's default);
- a row removed (or no longer meant for us, after a zone change) gives the key back its
  configured value: its ``[s2.limits]`` override if it has one, else the scope's default;
- a row that fails its schema (a bad key, a value that does not decode) is refused: never
  applied, not even in part; the key keeps the last good value it had from the store, and
  the refusal is reported once (per key and value) as an ``s2.limits.refused`` event through
  the gateway's event writer, logged, and counted;
- the zone is the ``zones`` row of this gateway when there is one, else ``[gateway] zone``.

Scopes map to the rate gate's: ``device`` → device, ``capability`` → capability,
``principal`` → user. Every change of the store's ``limits`` or ``zones`` namespace re-reads
the rows meant for us (a few hundred at most) and applies the difference; the gate is only
touched on the event loop, where ingest calls it, so no reading meets half a change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from amcp.fleet import (
    LIMITS,
    ZONES,
    LimitKey,
    LimitScope,
    LimitValue,
    RowError,
    decode_limit,
    decode_zone,
    parse_limit_key,
)
from amcp.runtime.supervisor import ChildContext
from amcp.store import Change, Store, StoreError
from amcp.wire.telemetry import EventRecord
from gateway.s2.admission import RateGate, Scope
from gateway.s2.config import LimitsConfig, RateLimit

log = logging.getLogger(__name__)

SCOPES = {
    LimitScope.DEVICE: Scope.DEVICE,
    LimitScope.CAPABILITY: Scope.CAPABILITY,
    LimitScope.PRINCIPAL: Scope.USER,
}
Report = Callable[[list[EventRecord]], object]
Slot = tuple[LimitScope, str]


def _configured(config: LimitsConfig, scope: LimitScope, name: str) -> RateLimit | None:
    """The ``[s2.limits]`` override of a key (None: the scope's default applies)."""
    overrides = {
        LimitScope.DEVICE: config.device_overrides,
        LimitScope.CAPABILITY: config.capability_overrides,
        LimitScope.PRINCIPAL: config.user_overrides,
    }[scope]
    return overrides.get(name)


class LimitRows:
    def __init__(
        self,
        gate: RateGate,
        config: LimitsConfig,
        store: Store,
        *,
        gateway: str,
        zone: str,
        report: Report,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``report`` is the gateway's event writer (``EventWriter.submit``); ``zone`` its
        configured zone (``[gateway] zone``), used while no ``zones`` row names one."""
        self.gate = gate
        self.config = config
        self.store = store
        self.gateway = gateway
        self.configured_zone = zone
        self._report = report
        self._wall = wall
        self.zone = zone
        self.applied: dict[Slot, LimitValue] = {}
        """What the store's rows put in force, by (scope, name)."""
        self.sources: dict[Slot, str] = {}
        """The row key each applied value came from."""
        self._good: dict[str, LimitValue] = {}
        self._refused: dict[str, bytes] = {}
        self.counts: Counter[str] = Counter()
        """``applied`` (a key set or changed by a row), ``restored`` (a key given back its
        configured value), ``refused`` (rows refused, each bad key and value once)."""
        self.refreshes = 0
        self._dirty = asyncio.Event()
        self._unsubscribe: list[Callable[[], None]] = []

    # -- running --------------------------------------------------------------------------
    async def run(self, ctx: ChildContext) -> None:
        """Apply what the store holds, then follow its changes (a supervised child)."""
        try:
            self._subscribe()
            await self.refresh()
            ctx.ready()
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                await self.refresh()
        finally:
            for unsubscribe in self._unsubscribe:
                unsubscribe()
            self._unsubscribe.clear()

    def _subscribe(self) -> None:
        loop = asyncio.get_running_loop()
        for namespace in (LIMITS, ZONES):
            self._unsubscribe.append(self.store.subscribe(namespace, self._on_change, loop=loop))

    def _on_change(self, _changes: list[Change]) -> None:
        self._dirty.set()

    async def refresh(self) -> None:
        """Read the rows meant for this gateway and apply the difference to the gate."""
        try:
            zone_row = await self.store.get(ZONES, self.gateway)
            rows = await self.store.items(LIMITS)
        except StoreError as exc:  # the store is being reopened: its restart re-reads it
            log.warning("limits: store unreadable", extra={"error": str(exc)})
            return
        self.refreshes += 1
        self.zone = self._zone(zone_row)
        self._apply(self._wanted(rows))

    def _zone(self, raw: bytes | None) -> str:
        if raw is None:
            self._refused.pop(f"{ZONES}:{self.gateway}", None)
            return self.configured_zone
        try:
            zone = decode_zone(raw).zone
        except RowError as exc:
            self._refuse(ZONES, self.gateway, raw, exc, kept=self.zone)
            return self.zone
        self._refused.pop(f"{ZONES}:{self.gateway}", None)
        return zone

    def _wanted(self, rows: dict[str, bytes]) -> dict[Slot, tuple[str, LimitValue]]:
        best: dict[Slot, tuple[int, str, LimitValue]] = {}
        for key, raw in rows.items():
            try:
                parsed: LimitKey = parse_limit_key(key)
            except RowError as exc:
                self._refuse(LIMITS, key, raw, exc, kept=None)
                continue
            if not parsed.target.includes(self.gateway, self.zone):
                continue
            try:
                value = decode_limit(raw)
            except RowError as exc:
                good = self._good.get(key)
                self._refuse(LIMITS, key, raw, exc, kept=None if good is None else str(good))
                if good is None:
                    continue
                value = good
            else:
                self._good[key] = value
                self._refused.pop(f"{LIMITS}:{key}", None)
            slot = (parsed.scope, parsed.name)
            rank = parsed.target.rank
            if slot not in best or rank > best[slot][0]:
                best[slot] = (rank, key, value)
        for key in set(self._good) - set(rows):
            del self._good[key]  # removed: a later bad row under that key has nothing to keep
        return {slot: (key, value) for slot, (_, key, value) in best.items()}

    def _apply(self, wanted: dict[Slot, tuple[str, LimitValue]]) -> None:
        changed: list[str] = []
        for slot, (key, value) in wanted.items():
            if self.applied.get(slot) != value:
                scope, name = slot
                self.gate.set_limit(SCOPES[scope], name, RateLimit(value.rate, value.burst))
                self.applied[slot] = value
                self.counts["applied"] += 1
                changed.append(key)
            self.sources[slot] = key
        for slot in set(self.applied) - set(wanted):
            scope, name = slot
            self.gate.set_limit(SCOPES[scope], name, _configured(self.config, scope, name))
            del self.applied[slot]
            changed.append(f"{self.sources.pop(slot)} (removed)")
            self.counts["restored"] += 1
        if changed:
            attrs = {"changed": changed[:20], "in_force": len(self.applied), "zone": self.zone}
            log.info("limits from the store applied", extra=attrs)
            # an event of its own: the audit chain records it (gateway.audit)
            now = int(self._wall() * 1000)
            self._report([EventRecord("s2.limits.applied", now, "s2", "info", dict(attrs))])

    def apply_config(self, config: LimitsConfig) -> None:
        """A reloaded ``[s2.limits]``: adopt it, then put the rows' values back on top."""
        self.config = config
        self.gate.apply(config)
        for (scope, name), value in self.applied.items():
            self.gate.set_limit(SCOPES[scope], name, RateLimit(value.rate, value.burst))

    def _refuse(
        self, namespace: str, key: str, raw: bytes, exc: RowError, kept: str | None
    ) -> None:
        mark = f"{namespace}:{key}"
        if self._refused.get(mark) == raw:
            return  # reported already
        self._refused[mark] = raw
        self.counts["refused"] += 1
        attrs: dict[str, object] = {
            "namespace": namespace,
            "key": key,
            "field": exc.field,
            "error": exc.problem,
            "kept_previous": kept is not None,
        }
        if kept is not None:
            attrs["kept"] = kept
        log.warning("limits: row refused", extra=attrs)
        record = EventRecord(
            "s2.limits.refused", int(self._wall() * 1000), key, "warning", dict(attrs)
        )
        self._report([record])

    # -- metrics --------------------------------------------------------------------------
    def in_force(self) -> dict[str, int]:
        """Keys whose limit comes from the store, by scope."""
        return dict(Counter(str(scope) for scope, _ in list(self.applied)))

    def snapshot(self) -> dict[str, object]:
        """For ``/status`` and tests."""
        return {
            "zone": self.zone,
            "in_force": {f"{scope}/{name}": key for (scope, name), key in self.sources.items()},
            "applied": self.counts["applied"],
            "restored": self.counts["restored"],
            "refused": self.counts["refused"],
        }


class LimitRowsCollector:
    """``cybernetic_s2_limit_rows_*``: rows applied, restored and refused, keys in force."""

    def __init__(self, rows: LimitRows) -> None:
        self._rows = rows

    def describe(self) -> Iterable[Metric]:
        return [Metric(m.name, m.documentation, m.type) for m in self._families()]

    def collect(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> list[Metric]:
        counts = dict(self._rows.counts)
        changes = CounterMetricFamily(
            "cybernetic_s2_limit_rows",
            "Limits rows from the store by outcome: applied (a key set or changed), restored "
            "(a key given back its [s2.limits] value when its row went), refused (a bad row, "
            "never applied; reported as an s2.limits.refused event)",
            labels=["outcome"],
        )
        for outcome in ("applied", "restored", "refused"):
            changes.add_metric([outcome], float(counts.get(outcome, 0)))
        active = GaugeMetricFamily(
            "cybernetic_s2_limit_rows_in_force",
            "Keys whose rate limit comes from a limits row of the store, by scope",
            labels=["scope"],
        )
        in_force = self._rows.in_force()
        for scope in LimitScope:
            active.add_metric([str(scope)], float(in_force.get(str(scope), 0)))
        return [changes, active]
