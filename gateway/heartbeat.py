"""Heartbeats up: a signed :class:`~amcp.wire.messages.Heartbeat` to the cloud every few seconds.

Every ``[uplink] heartbeat_interval`` seconds (5 by default) the gateway publishes on
``{prefix}/{gateway}/heartbeat`` (:func:`amcp.wire.topics.heartbeat`) a heartbeat sealed in a
fresh envelope, on its own MQTT session to the cloud broker. Its content is what the gateway's
status report says (:mod:`gateway.status`, the ``report`` callable): version, uptime, outbox
depth, bytes and oldest age, the uplink's link state and lag, each session's state, the policy
and pattern versions; plus the ingest rate (readings stored per second since the previous
heartbeat, from the ``cybernetic_ingest_stored_readings_total`` counter). The cloud keeps the
last one per gateway in its fleet table and judges liveness by phi-accrual on their arrivals
(``cloud.fleet``); it measures the clock offset from ``ts_ms`` against its own clock.

QoS 0, deliberately: a heartbeat is worth something only when it is fresh. QoS 1 would queue
heartbeats in the client while the link is down and deliver them in a burst on reconnect, and
a burst of stale arrivals is exactly what a phi-accrual detector must not learn as a cadence
(it would shrink the learnt interval and deviation, then declare a live gateway late). A lost
heartbeat costs nothing: the next one follows ``heartbeat_interval`` later, and the detector
tolerates a missing one by construction. It also never waits on a PUBACK, so a slow cloud
broker cannot delay it behind the telemetry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from amcp.link import GatewayLink
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import Link, Session, SessionSpec, Transport
from amcp.runtime.supervisor import ChildContext
from amcp.wire import topics
from amcp.wire.messages import Heartbeat
from gateway.config import UplinkSettings

log = logging.getLogger(__name__)

STORED_SAMPLE = "cybernetic_ingest_stored_readings_total"
"""The counter the ingest rate is computed from (gateway.metrics)."""


def heartbeat_of(
    report: dict[str, Any],
    *,
    node: str,
    seq: int,
    boot: str,
    interval_s: float,
    ingest_rate: float,
    ts_ms: int,
) -> Heartbeat:
    """A heartbeat carrying what the gateway's status report (``gateway.status``) says."""
    outbox = report.get("outbox", {})
    uplink = report.get("uplink", {})
    policy = report.get("policy") or {}
    patterns = report.get("patterns", {})
    return Heartbeat(
        node=node,
        seq=seq,
        ts_ms=ts_ms,
        uptime_s=float(report.get("uptime_s", 0.0)),
        version=str(report.get("version", "")),
        boot=boot,
        interval_s=interval_s,
        outbox_rows=int(outbox.get("rows", 0)),
        outbox_bytes=int(outbox.get("bytes", 0)),
        outbox_oldest_age_s=outbox.get("oldest_age_s"),
        ingest_rate=round(ingest_rate, 3),
        ingest_paused=bool(report.get("ingest", {}).get("paused", False)),
        uplink_connected=bool(uplink.get("connected", False)),
        uplink_lag_s=float(uplink.get("lag_s", 0.0)),
        links={str(k): bool(v) for k, v in report.get("sessions", {}).items()},
        policy=str(policy.get("policy", "")),
        policy_version=policy.get("version"),
        patterns_generation=int(patterns.get("generation", 0)),
        patterns_rules=int(patterns.get("rules", 0)),
    )


class HeartbeatSender:
    """The gateway's heartbeat worker (a child of the gateway's ``workers``)."""

    def __init__(
        self,
        settings: UplinkSettings,
        link: GatewayLink,
        report: Callable[[], dict[str, Any]],
        *,
        gateway: str,
        registry: CollectorRegistry | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``report``: the gateway's status report (``Gateway.report``); ``registry``: the
        gateway's metrics, whose stored-readings counter gives the ingest rate."""
        self.settings = settings
        self.link = link
        self.report = report
        self.gateway = gateway
        self.registry = registry
        self.clock = clock
        self.topic = topics.heartbeat(settings.topic_prefix, gateway)
        self.boot = os.urandom(6).hex()
        """A new id per process start: the cloud tells a restart from a late heartbeat."""
        self.session = Session(
            transport or MqttTransport(),
            settings.broker,
            SessionSpec(f"{gateway}-heartbeat"),
            name="heartbeat",
        )
        self.seq = 0
        self.sent = 0
        self.failed = 0
        """Heartbeats not made in a row (the report failed)."""
        self._last_count: tuple[float, float] | None = None

    @property
    def connected(self) -> bool:
        return self.session.connected

    async def run(self, ctx: ChildContext) -> None:
        await self.session.run(self._serve, on_connected=ctx.ready)

    def _rate(self) -> float:
        if self.registry is None:
            return 0.0
        count, now = self.registry.get_sample_value(STORED_SAMPLE), self.clock()
        if count is None:
            return 0.0
        last, self._last_count = self._last_count, (float(count), now)
        if last is None or now <= last[1]:
            return 0.0
        return max(0.0, (count - last[0]) / (now - last[1]))

    def beat(self) -> Heartbeat:
        """The next heartbeat (numbered), made now from the status report."""
        heartbeat = heartbeat_of(
            self.report(),
            node=self.gateway,
            seq=self.seq,
            boot=self.boot,
            interval_s=self.settings.heartbeat_interval,
            ingest_rate=self._rate(),
            ts_ms=int(time.time() * 1000),
        )
        self.seq += 1
        return heartbeat

    async def _serve(self, link: Link) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            started = self.clock()
            try:
                data = self.link.seal(self.beat(), self.topic)
            except Exception:  # a report that cannot be made skips one heartbeat, no more
                self.failed += 1
                if self.failed == 1:  # logged once, not every few seconds
                    log.exception("heartbeat not made; skipped until the report works again")
            else:
                self.failed = 0
                await link.publish(self.topic, data, qos=0)
                self.sent += 1
            await asyncio.sleep(max(0.0, interval - (self.clock() - started)))
