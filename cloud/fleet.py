"""The fleet table: every gateway's last heartbeat, and whether it is alive, late or lost.

The cloud subscribes, on its own clean MQTT session, to every gateway's heartbeat topic
(:func:`amcp.wire.topics.heartbeat_filter`); each heartbeat is a signed envelope opened with
:class:`~amcp.link.CloudLinks` (so a gateway can only speak for itself). An envelope that does
not open (forged, unknown gateway, replayed, stale, not a heartbeat) is refused, counted by
reason in ``cybernetic_fleet_refused_heartbeats_total{reason}`` and logged (once per gateway
and reason), and the loop goes on.

Liveness is judged by phi-accrual on the arrivals (:mod:`amcp.runtime.phi`, the detector S2
uses for devices). A gateway announces its cadence in each heartbeat (``interval_s``), so it is
judged from its first one; its learnt cadence takes over after a few. Every
``[fleet] check_interval`` seconds each gateway is judged:

- ``lost`` when phi >= ``lost_phi`` and the silence is at least ``min_lost_s``;
- ``late`` when phi >= ``late_phi`` (and not lost);
- ``alive`` otherwise; any accepted heartbeat makes a gateway alive at once.

Each change is logged once (``gateway late``, ``gateway lost``, ``gateway back``) and counted
in ``cybernetic_fleet_state_changes_total{state}``. Detection bound: a silent gateway is
marked lost at ``max(min_lost_s, mean + pause + y* * std)`` of silence (``y* ≈ 5.23`` at phi 8,
see :meth:`FleetTable.lost_after`), at most ``check_interval`` later. A gateway that comes back
after being lost, or restarts (a new ``boot``), starts a fresh history from its announced
cadence: an outage is not a cadence to learn.

The clock offset (gateway clock minus cloud clock, in seconds) is measured on arrival from the
heartbeat's ``ts_ms``; it includes the one-way transit time (milliseconds on a healthy link),
so it is an upper bound of a fast gateway clock and a lower bound of a slow one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from amcp.link import CloudLinks
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.phi import PhiAccrual
from amcp.runtime.session import Link, Message, Session, SessionSpec, Transport
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext, stop_task
from amcp.wire import EnvelopeError, topics
from amcp.wire.messages import Heartbeat
from cloud.config import FleetSettings

log = logging.getLogger(__name__)

State = Literal["alive", "late", "lost"]
STATES: tuple[State, ...] = ("alive", "late", "lost")

DEFAULT_INTERVAL_S = 5.0
"""Assumed cadence of a gateway whose heartbeat names none (an older gateway)."""


@dataclass(frozen=True)
class _PhiParams:
    """The detector's parameters (:class:`amcp.runtime.phi.PhiParameters`) from ``[fleet]``."""

    threshold: float
    max_units: int
    window: int = 60
    min_std_s: float = 0.1
    acceptable_pause_s: float = 0.0
    """No pause beyond the deviation: ``min_lost_s`` is the floor that absorbs link hiccups."""
    first_interval_s: float = DEFAULT_INTERVAL_S
    min_intervals: int = 8
    min_std_ratio: float = 0.1
    """A heartbeat crosses a WAN link and two brokers: its jitter is a tenth of its cadence
    at least."""


@dataclass
class Gateway:
    """One row of the fleet table."""

    gateway: str
    state: State
    since: float
    """Wall-clock time the gateway entered ``state``."""
    last_seen: float
    """Wall-clock time of its last accepted heartbeat."""
    heartbeat: Heartbeat
    clock_offset_s: float
    heartbeats: int = 1
    restarts: int = 0
    """Heartbeats seen from a new boot (the gateway process started again)."""
    missed: int = 0
    """Heartbeats the sequence numbers say never arrived (QoS 0, a lost link)."""
    lost_after_s: float | None = None
    """Silence when it was last marked lost."""

    def as_json(self, now: float, phi: float) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "state": self.state,
            "since_s": round(now - self.since, 1),
            "last_seen_age_s": round(now - self.last_seen, 2),
            "phi": round(phi, 2),
            "heartbeats": self.heartbeats,
            "missed": self.missed,
            "restarts": self.restarts,
            "lost_after_s": None if self.lost_after_s is None else round(self.lost_after_s, 2),
            "clock_offset_s": round(self.clock_offset_s, 3),
            "version": hb.version,
            "boot": hb.boot,
            "seq": hb.seq,
            "interval_s": hb.interval_s,
            "uptime_s": hb.uptime_s,
            "outbox": {
                "rows": hb.outbox_rows,
                "bytes": hb.outbox_bytes,
                "oldest_age_s": hb.outbox_oldest_age_s,
            },
            "ingest": {"rate": hb.ingest_rate, "paused": hb.ingest_paused},
            "uplink": {"connected": hb.uplink_connected, "lag_s": hb.uplink_lag_s},
            "links": dict(hb.links),
            "policy": {"policy": hb.policy, "version": hb.policy_version} if hb.policy else None,
            "patterns": {"generation": hb.patterns_generation, "rules": hb.patterns_rules},
        }


@dataclass
class _Refusals:
    by_reason: Tally[str] = field(default_factory=Tally)
    logged: set[tuple[str, str]] = field(default_factory=set)


class FleetTable:
    """The table itself, without MQTT: heartbeats in, states out (unit-tested on a clock)."""

    def __init__(
        self,
        settings: FleetSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._wall = wall
        self._params = _PhiParams(threshold=settings.lost_phi, max_units=settings.max_gateways)
        self.phi = PhiAccrual(self._params, clock)
        self.rows: dict[str, Gateway] = {}
        self.changes: Tally[State] = Tally()
        self.untracked = 0
        """Heartbeats of gateways not kept because the table is full."""

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Gateway]:
        return iter(list(self.rows.values()))

    def get(self, gateway: str) -> Gateway | None:
        return self.rows.get(gateway)

    def accept(self, gateway: str, heartbeat: Heartbeat) -> Gateway | None:
        """An authentic heartbeat from ``gateway``: the row, now alive (None: table full)."""
        wall = self._wall()
        offset = heartbeat.ts_ms / 1000 - wall
        interval = heartbeat.interval_s if heartbeat.interval_s > 0 else None
        row = self.rows.get(gateway)
        if row is None:
            if len(self.rows) >= self.settings.max_gateways or not self.phi.heartbeat(
                gateway, interval
            ):
                self.untracked += 1
                return None
            row = Gateway(gateway, "alive", wall, wall, heartbeat, offset)
            self.rows[gateway] = row
            log.info(
                "gateway joined the fleet table",
                extra={"gateway": gateway, "version": heartbeat.version, "boot": heartbeat.boot},
            )
            return row
        old = row.heartbeat
        restarted = bool(heartbeat.boot) and heartbeat.boot != old.boot
        if restarted:
            row.restarts += 1
        elif heartbeat.seq > old.seq + 1:
            row.missed += heartbeat.seq - old.seq - 1
        if restarted or row.state == "lost" or heartbeat.interval_s != old.interval_s:
            # an outage or a restart is not a cadence: start again from the announced one
            self.phi.forget(gateway)
        self.phi.heartbeat(gateway, interval)
        silence = wall - row.last_seen
        row.heartbeat, row.last_seen, row.clock_offset_s = heartbeat, wall, offset
        row.heartbeats += 1
        if row.state != "alive":
            self._change(row, "alive", silence=silence, restarted=restarted)
        elif restarted:
            log.info("gateway restarted", extra={"gateway": gateway, "boot": heartbeat.boot})
        return row

    def lost_after(self, gateway: str) -> float:
        """The silence after which ``gateway`` is marked lost if nothing comes (seconds; at
        most ``check_interval`` later), from what is known of its cadence now."""
        last = self._clock() - self.phi.silence(gateway)
        return max(self.settings.min_lost_s, self.phi.deadline(gateway) - last)

    def resume(self) -> None:
        """The cloud hears the fleet again after its own link was down: what it did not hear
        meanwhile says nothing about the gateways, so every history starts again now, from
        the announced cadence (a gateway still silent is lost ``min_lost_s`` from now)."""
        for row in list(self.rows.values()):
            interval = row.heartbeat.interval_s
            self.phi.forget(row.gateway)
            self.phi.heartbeat(row.gateway, interval if interval > 0 else None)

    def check(self) -> list[Gateway]:
        """Judge every gateway now; returns the rows whose state changed."""
        s = self.settings
        changed = []
        for row in list(self.rows.values()):
            if row.gateway not in self.phi:
                continue
            phi = self.phi.phi(row.gateway)
            silence = self.phi.silence(row.gateway)
            state: State = "alive"
            if phi >= s.lost_phi and silence >= s.min_lost_s:
                state = "lost"
            elif phi >= s.late_phi:
                state = "late"
            if state != row.state and not (row.state == "lost" and state == "late"):
                # lost stays lost until a heartbeat (phi only grows in silence)
                self._change(row, state, silence=silence)
                changed.append(row)
        return changed

    def _change(
        self, row: Gateway, state: State, *, silence: float, restarted: bool = False
    ) -> None:
        before, row.state, row.since = row.state, state, self._wall()
        self.changes[state] += 1
        extra = {"gateway": row.gateway, "silence_s": round(silence, 2), "was": before}
        if state == "lost":
            row.lost_after_s = silence
            log.warning("gateway lost: no heartbeat", extra=extra)
        elif state == "late":
            log.warning("gateway late: heartbeats overdue", extra=extra)
        elif before == "lost":
            log.warning("gateway back", extra={**extra, "restarted": restarted})
        else:
            log.info("gateway on time again", extra=extra)

    def counts(self) -> dict[State, int]:
        out: dict[State, int] = dict.fromkeys(STATES, 0)
        for row in list(self.rows.values()):
            out[row.state] += 1
        return out

    def report(self) -> dict[str, Any]:
        wall = self._wall()
        gateways = {}
        for row in list(self.rows.values()):
            phi = self.phi.phi(row.gateway) if row.gateway in self.phi else 0.0
            gateways[row.gateway] = row.as_json(wall, phi)
        return {"counts": self.counts(), "gateways": gateways, "untracked": self.untracked}


class _FleetCollector(Collector):
    """``cybernetic_fleet_gateways{state}`` and the bounded per-gateway last-seen age."""

    def __init__(self, table: FleetTable, max_labelled: int) -> None:
        self.table = table
        self.max_labelled = max_labelled

    def collect(self) -> Iterable[Metric]:
        states = GaugeMetricFamily(
            "cybernetic_fleet_gateways", "Gateways in the fleet table, by state", labels=["state"]
        )
        for state, n in self.table.counts().items():
            states.add_metric([state], n)
        ages = GaugeMetricFamily(
            "cybernetic_fleet_last_seen_age_seconds",
            "Seconds since each gateway's last heartbeat (the first [fleet] "
            "metrics_max_gateways heard from only)",
            labels=["gateway"],
        )
        now = time.time()
        for row in list(self.table)[: self.max_labelled]:
            ages.add_metric([row.gateway], max(0.0, now - row.last_seen))
        changes = CounterMetricFamily(
            "cybernetic_fleet_state_changes",
            "Gateways entering a state (alive again, late, lost)",
            labels=["state"],
        )
        for state in STATES:
            changes.add_metric([state], self.table.changes[state])
        untracked = CounterMetricFamily(
            "cybernetic_fleet_untracked_heartbeats",
            "Heartbeats of gateways not kept because the table was full ([fleet] max_gateways)",
        )
        untracked.add_metric([], self.table.untracked)
        return [states, ages, changes, untracked]


class Fleet:
    """The cloud's fleet worker: the heartbeat subscription feeding a :class:`FleetTable`."""

    def __init__(
        self,
        settings: FleetSettings,
        links: CloudLinks,
        registry: CollectorRegistry,
        *,
        broker: BrokerLink,
        topic_prefix: str = topics.DEFAULT_PREFIX,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.links = links
        self.prefix = topic_prefix
        self.table = FleetTable(settings, clock=clock)
        self.session = Session(
            transport or MqttTransport(),
            broker,
            SessionSpec(settings.session, (topics.heartbeat_filter(topic_prefix),), qos=0),
            name="fleet",
        )
        self._refusals = _Refusals()
        self.heartbeats = Counter(
            "cybernetic_fleet_heartbeats", "Gateway heartbeats accepted", registry=registry
        )
        self.refused = Counter(
            "cybernetic_fleet_refused_heartbeats",
            "Heartbeat envelopes refused (forged, unknown gateway, replayed, stale...), by reason",
            ["reason"],
            registry=registry,
        )
        registry.register(_FleetCollector(self.table, settings.metrics_max_gateways))

    @property
    def connected(self) -> bool:
        return self.session.connected

    def report(self) -> dict[str, Any]:
        """The ``fleet`` entry of the cloud's ``/status`` (on the event loop, from memory)."""
        s = self.settings
        return {
            **self.table.report(),
            "refused": dict(self._refusals.by_reason),
            "late_phi": s.late_phi,
            "lost_phi": s.lost_phi,
            "min_lost_s": s.min_lost_s,
        }

    async def run(self, ctx: ChildContext) -> None:
        """The subscription and the periodic judgement, until stopped; either failing is the
        child's failure. States are judged only while the session is connected: a cloud that
        cannot hear the fleet does not declare it lost."""

        def connected() -> None:
            self.table.resume()  # what was not heard while disconnected says nothing
            ctx.ready()

        tasks = {
            asyncio.ensure_future(self.session.run(self._serve, on_connected=connected)),
            asyncio.ensure_future(self._judge()),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                await stop_task(task, 2.0)
        for task in done:
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                raise exc

    async def _judge(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_interval)
            if self.session.connected:
                self.table.check()

    async def _serve(self, link: Link) -> None:
        async for message in link.messages():
            await self.receive(message)

    async def receive(self, message: Message) -> Gateway | None:
        """One message from the heartbeat subscription; never raises for what it carries."""
        topic = message.topic
        gateway = topics.gateway_of(self.prefix, topic, "heartbeat")
        if gateway is None:
            self._refuse("?", "bad_topic", topic)
            return None
        try:
            opened = await asyncio.to_thread(self.links.open, gateway, message.payload, topic)
        except EnvelopeError as exc:
            self._refuse(gateway, exc.reason, str(exc))
            return None
        heartbeat = opened.message
        if not isinstance(heartbeat, Heartbeat) or heartbeat.node != gateway:
            self._refuse(gateway, "not_a_heartbeat", type(heartbeat).__name__)
            return None
        self.heartbeats.inc()
        return self.table.accept(gateway, heartbeat)

    def _refuse(self, gateway: str, reason: str, detail: str) -> None:
        self.refused.labels(reason).inc()
        self._refusals.by_reason[reason] += 1
        key = (gateway, reason)
        if key not in self._refusals.logged and len(self._refusals.logged) < 1000:
            self._refusals.logged.add(key)
            log.warning(
                "heartbeat refused (logged once per gateway and reason)",
                extra={"gateway": gateway, "reason": reason, "error": detail[:200]},
            )
