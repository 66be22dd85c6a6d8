"""S2 in the running gateway: the ingest stage, the once-a-second control tick, and events.

- :meth:`S2Service.stage` is an ingest :class:`~gateway.hooks.IngestFilter`: every reading is a
  heartbeat of its device (even one the limiter then drops: it is still a sign of life), the
  rate gate decides per reading, and admitted readings feed the stuck-sensor detector.
- :meth:`S2Service.run` is a supervised child: it reports load (outbox depth, ingest backlog,
  CPU) to the adaptive limiter, checks for zombies and sweeps expired leases every second.
- Every S2 event becomes an :class:`~amcp.wire.telemetry.EventRecord` in the outbox, so it
  reaches the cloud even after days offline. Per-device events pass one shared
  :class:`~gateway.s2.throttle.EventThrottle` (``[s2.events]``); the rest are summarised in
  one ``s2.events.suppressed`` event at most every ``summary_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

import msgspec
from prometheus_client import CollectorRegistry

from amcp.runtime.supervisor import ChildContext
from amcp.wire.telemetry import EventRecord, Reading
from gateway.s2.admission import RateGate
from gateway.s2.config import S2Config
from gateway.s2.events import EventSink, S2Event, UnitKind
from gateway.s2.leases import LeaseTable
from gateway.s2.metrics import S2Collector
from gateway.s2.stuck import StuckDetector
from gateway.s2.throttle import EventThrottle
from gateway.s2.zombies import ZombieDetector

log = logging.getLogger(__name__)

_SEVERITY = {
    "s2.zombie": "warning",
    "s2.sensor.stuck": "warning",
    "s2.metrics.inconsistent": "warning",
    "s2.lease.expired": "info",
    "s2.lease.granted": "info",
    "s2.lease.refused": "info",
    "s2.events.suppressed": "warning",
}


def to_record(event: S2Event) -> EventRecord:
    attrs = msgspec.to_builtins(event)
    name = str(attrs.pop("type"))
    source = str(attrs.get("unit") or attrs.get("device") or "s2")
    return EventRecord(name, int(attrs.pop("ts_ms")), source, _SEVERITY.get(name, "info"), attrs)


def coordination(
    config: S2Config,
    emit: EventSink,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[RateGate, LeaseTable]:
    """S2's rate gate and lease table on their own, for a daemon that builds them before S1
    (S1 admits intents and takes leases with them; S2, built after S1, ticks and sweeps them).
    ``emit`` gets their events (``LimitsChanged``, ``LeaseExpired``)."""
    gate = RateGate(config.limits, clock, emit=emit)
    leases = LeaseTable(clock, ttl_s=config.lease_ttl_s, max_queue=config.lease_queue, emit=emit)
    return gate, leases


class MoveWork(Protocol):
    """Where a zombie's work goes: S1's ``reassign`` (its standby devices), told which
    devices S2 holds healthy."""

    def __call__(self, unit: str, kind: str, *, healthy: Callable[[str], bool]) -> bool: ...


LoadSignal = Callable[[], float]


class S2Service:
    def __init__(
        self,
        config: S2Config,
        *,
        load: dict[str, LoadSignal] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reassign: MoveWork | None = None,
        gate: RateGate | None = None,
        leases: LeaseTable | None = None,
    ) -> None:
        """``load`` names the signals the adaptive limits may watch (``outbox_depth``,
        ``ingest_backlog``; ``cpu`` is S2's own); more are added with :meth:`watch`.

        ``gate`` and ``leases``: the rate gate and lease table when they were built before
        S2 (the daemon builds them first and hands them to S1 too, which admits intents and
        takes leases with them; :func:`coordination`); S2 ticks, sweeps and reports them."""
        self.config = config
        self._load: dict[str, LoadSignal] = dict(load or {})
        self._move = reassign
        self.events: asyncio.Queue[EventRecord] = asyncio.Queue(maxsize=10_000)
        self.dropped_events = 0
        self.gate = gate if gate is not None else RateGate(config.limits, clock, emit=self._emit)
        self.throttle = EventThrottle(config.events, clock, self._emit)
        self.zombies = ZombieDetector(
            config.phi,
            clock,
            reassign=self._reassign if reassign is not None else None,
            throttle=self.throttle,
        )
        self.stuck = StuckDetector(config.stuck, clock, throttle=self.throttle)
        self._untracked_mark = 0
        self.leases = (
            leases
            if leases is not None
            else LeaseTable(
                clock, ttl_s=config.lease_ttl_s, max_queue=config.lease_queue, emit=self._emit
            )
        )
        self._cpu_mark = (time.monotonic(), time.process_time())

    def watch(self, name: str, signal: LoadSignal) -> None:
        """Report ``signal()`` as the load signal ``name`` at every tick."""
        self._load[name] = signal

    def healthy(self, device: str) -> bool:
        return not self.zombies.is_zombie(device)

    def _reassign(self, unit: str, kind: UnitKind) -> bool:
        assert self._move is not None
        return self._move(unit, kind, healthy=self.healthy)

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(
            S2Collector(
                gate=self.gate,
                leases=self.leases,
                zombies=self.zombies,
                stuck=self.stuck,
                throttle=self.throttle,
            )
        )

    def _emit(self, event: S2Event) -> None:
        try:
            self.events.put_nowait(to_record(event))
        except asyncio.QueueFull:  # the outbox writer is far behind; count, never block S2
            self.dropped_events += 1

    # -- ingest stage ---------------------------------------------------------------------
    def stage(self, readings: list[Reading]) -> list[Reading]:
        if not readings:
            return readings
        devices = [r.device for r in readings]
        self.zombies.heartbeats(devices)
        flags = self.gate.admit_devices(devices)
        kept = [r for r, ok in zip(readings, flags, strict=True) if ok]
        for r in kept:
            self.stuck.observe(r.device, r.values)
        return kept

    # -- control tick ---------------------------------------------------------------------
    def _cpu(self) -> float:
        now, cpu = time.monotonic(), time.process_time()
        wall0, cpu0 = self._cpu_mark
        self._cpu_mark = (now, cpu)
        return (cpu - cpu0) / max(1e-6, now - wall0)

    def tick(self) -> None:
        # report only the signals the configuration watches: an operator may drop any of them
        signals = self.config.limits.adaptive.signals
        readings = {name: float(signal()) for name, signal in self._load.items()}
        readings["cpu"] = self._cpu()
        for name, value in readings.items():
            if name in signals:
                self.gate.observe_load(name, value)
        self.gate.tick_if_due()  # prunes idle limiter keys even when no reading comes
        self.zombies.check()
        self._summarise()
        self.leases.sweep()

    def _summarise(self) -> None:
        phi = self.zombies.phi
        untracked = phi.untracked + phi.evicted
        self.throttle.tick(
            zombies=self.zombies.count(),
            sensors_stuck=self.stuck.stuck_count,
            untracked=untracked - self._untracked_mark,
        )
        self._untracked_mark = untracked

    async def run(self, ctx: ChildContext, submit: Callable[[list[EventRecord]], object]) -> None:
        """Tick every second and hand S2 events to ``submit`` (the gateway's event writer,
        gateway.events: it never blocks, and it owns the one retry rule into the outbox)."""
        ctx.ready()
        interval = self.config.limits.adaptive.interval_s
        next_tick = time.monotonic()
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                first = await asyncio.wait_for(self.events.get(), timeout)
            except TimeoutError:
                first = None
            if first is not None:
                batch = [first]
                while not self.events.empty() and len(batch) < 1000:
                    batch.append(self.events.get_nowait())
                submit(batch)
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick = time.monotonic() + interval
