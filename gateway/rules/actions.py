"""What a fired rule does: events and alerts to the cloud, device commands, capabilities.

Matching runs on the ingest path and must never wait for an action, so the stage only
*submits*; this runner does the work on its own tasks:

- **events, alerts and algedonic signals** become :class:`~amcp.wire.telemetry.EventRecord`
  rows in the outbox, in batches. The outbox is durable and the uplink forwards it when the
  cloud is reachable, so an alert raised during a week offline still arrives. An algedonic
  signal is an event named ``algedonic`` with severity ``critical`` (the fields of
  :class:`~amcp.wire.messages.AlgedonicSignal` in ``attrs``); routing it to its own priority
  topic on the cloud side is a later issue. They reach the outbox through the gateway's event
  writer (gateway.events), which keeps them until the outbox takes them.
- **device commands** go through S1 (``command``, the daemon's ``S1.command``): they take the
  device's S2 lease like every other command (queued behind an intent driving the device,
  FIFO) and succeed when the device answers ``done``. A runner without ``command`` (tests,
  tools) publishes on the local broker itself as the JSON the S1 device protocol defines
  (``devices/{device}/commands/{id}``, :mod:`gateway.s1.devicewire`), QoS 1, without a lease;
- **capabilities** are callables registered by name (S1 provides them), sync or async.

Commands and capabilities are retried with exponential backoff and jitter
(``retry_attempts``); one that still fails is counted and reported to the cloud as a
``rules.action.failed`` event. Nothing here can stop matching: a full queue drops the new
action and counts it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import Backoff, Link, Session, SessionSpec, Transport
from amcp.runtime.settings import BrokerLink
from amcp.wire import topics
from amcp.wire.telemetry import EventRecord
from gateway.rules.manager import Entry
from gateway.rules.model import (
    ActionSpec,
    AlgedonicAction,
    CapabilityAction,
    CommandAction,
    EventAction,
)
from gateway.rules.settings import RulesSettings
from gateway.s1.devicewire import ENCODER, DeviceCommand

log = logging.getLogger(__name__)

ALERT_SEVERITIES = frozenset({"warning", "error", "critical"})
"""A rule event of these severities is an alert: sent ahead of the telemetry backlog."""

Capability = Callable[[Mapping[str, Any], Mapping[str, Any]], object]
"""Called as ``capability(args, event)``; may return an awaitable, which is awaited."""

Invoke = Callable[[str, dict[str, Any], str], Awaitable[Any]]
"""``invoke(capability, args, correlation)``: S1 carrying out one of the gateway's own
capabilities (on a device). An exception with a true ``permanent`` attribute is not retried."""
AppendEvents = Callable[[list[EventRecord]], Awaitable[object]]


class SendCommand(Protocol):
    """S1 sending one device command under the device's lease (``S1.command``); returns the
    ``done`` data, raises when the device failed, said nothing or the lease was refused."""

    def __call__(
        self,
        device: str,
        action: str,
        args: dict[str, Any],
        *,
        holder: str,
        correlation: str | None = None,
        timeout: float | None = None,
    ) -> Awaitable[Any]: ...


class PermanentActionError(Exception):
    """An action that cannot succeed by retrying (unknown capability, no device to address)."""


class NotConnectedError(ConnectionError):
    """The local broker connection is down; a command waits for the next attempt."""


@dataclass(frozen=True)
class Job:
    rule_id: str
    spec: CommandAction | CapabilityAction
    event: Mapping[str, Any]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _reading_attrs(rule_id: str, kind: str, event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "rule": rule_id,
        "kind": kind,
        "reading": {k: event[k] for k in ("boot", "seq", "ts_ms") if k in event},
        "values": event.get("values", {}),
    }


def event_record(
    rule_id: str,
    entry: Entry,
    spec: EventAction | AlgedonicAction,
    event: Mapping[str, Any],
    gateway: str,
) -> EventRecord:
    """The outbox row for an event-like action (pure: used by ``patterns test`` as well)."""
    source = str(event.get("device", gateway))
    attrs = _reading_attrs(rule_id, entry.kind, event)
    if isinstance(spec, AlgedonicAction):
        attrs |= {
            "valence": spec.valence,
            "intensity": spec.intensity,
            "origin": f"rules/{gateway}/{rule_id}",
            "reason": spec.reason or f"rule {rule_id} fired for {source}",
        }
        return EventRecord("algedonic", _now_ms(), source, "critical", attrs, urgent=True)
    if spec.message:
        attrs["message"] = spec.message
    name = spec.name or f"rules.{rule_id}"
    alert = spec.severity in ALERT_SEVERITIES  # an alert goes on the urgent lane
    return EventRecord(name, _now_ms(), source, spec.severity, attrs, urgent=alert)


class ActionRunner:
    def __init__(
        self,
        settings: RulesSettings,
        append_events: AppendEvents,
        *,
        gateway: str,
        local_broker: BrokerLink | None = None,
        capabilities: Mapping[str, Capability] | None = None,
        invoke: Invoke | None = None,
        transport: Transport | None = None,
        command: SendCommand | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self._append = append_events
        self.local_broker = local_broker
        self.session = (
            None
            if local_broker is None
            else Session(
                transport or MqttTransport(),
                local_broker,
                SessionSpec(f"{gateway}-rules"),
                name="rules",
            )
        )
        self.capabilities: dict[str, Capability] = dict(capabilities or {})
        self.invoke = invoke
        """Where a capability no callable is registered for goes (S1's ``invoke``)."""
        self.command = command
        """Where device commands go (S1's ``command``: the lease, the device's answer)."""
        self.records: asyncio.Queue[EventRecord] = asyncio.Queue(maxsize=settings.queue_max)
        self.jobs: asyncio.Queue[Job] = asyncio.Queue(maxsize=settings.queue_max)
        self.counts: Counter[tuple[str, str]] = Counter()
        """(action type, outcome) → count; outcomes: ok, retried, failed, dropped."""
        self._warned: set[str] = set()

    def register_capability(self, name: str, fn: Capability) -> None:
        self.capabilities[name] = fn

    # -- submitting (on the event loop, from the ingest stage) ---------------------------
    def submit(self, rule_id: str, entry: Entry, event: Mapping[str, Any]) -> None:
        for spec in entry.actions:
            self._submit_one(rule_id, entry, spec, event)

    def _submit_one(
        self, rule_id: str, entry: Entry, spec: ActionSpec, event: Mapping[str, Any]
    ) -> None:
        kind = spec.__struct_config__.tag
        try:
            if isinstance(spec, EventAction | AlgedonicAction):
                self.records.put_nowait(event_record(rule_id, entry, spec, event, self.gateway))
                self.counts[str(kind), "ok"] += 1
            else:
                self.jobs.put_nowait(Job(rule_id, spec, event))
        except asyncio.QueueFull:
            self.counts[str(kind), "dropped"] += 1

    def report(self, record: EventRecord) -> None:
        """Queue an event of the rules service itself (refusals, swaps, failed actions)."""
        try:
            self.records.put_nowait(record)
        except asyncio.QueueFull:
            self.counts["report", "dropped"] += 1

    # -- running --------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write_events(), name="rules-events")
            for i in range(self.settings.workers):
                tg.create_task(self._work(), name=f"rules-action-{i}")
            if self.session is not None:
                tg.create_task(self.session.run(_hold), name="rules-broker")

    async def _write_events(self) -> None:
        """Move the matching path's records to the event sink (the gateway's event writer,
        gateway.events, which owns the one retry rule into the outbox)."""
        while True:
            batch = [await self.records.get()]
            while not self.records.empty() and len(batch) < 1000:
                batch.append(self.records.get_nowait())
            await self._append(batch)

    async def _work(self) -> None:
        while True:
            job = await self.jobs.get()
            await self.execute(job)

    async def execute(self, job: Job) -> bool:
        """Run one job with retries; True when it succeeded."""
        s = self.settings
        kind = str(job.spec.__struct_config__.tag)
        backoff = Backoff(s.retry_initial, s.retry_max)
        error: Exception | None = None
        attempt = 0
        for attempt in range(1, s.retry_attempts + 1):
            try:
                if isinstance(job.spec, CommandAction):
                    await self._command(job.spec, job)
                else:
                    await self._capability(job.spec, job)
            except PermanentActionError as exc:
                error = exc
                break
            except Exception as exc:
                error = exc
                if attempt < s.retry_attempts:
                    self.counts[kind, "retried"] += 1
                    await asyncio.sleep(backoff.next_delay())
            else:
                self.counts[kind, "ok"] += 1
                return True
        self.counts[kind, "failed"] += 1
        if job.rule_id not in self._warned:
            self._warned.add(job.rule_id)
            log.warning("rule action failed", extra={"rule": job.rule_id, "error": str(error)})
        attrs = {
            "rule": job.rule_id,
            "action": kind,
            "error": f"{type(error).__name__}: {error}",
            "attempts": attempt,
        }
        source = str(job.event.get("device", self.gateway))
        self.report(EventRecord("rules.action.failed", _now_ms(), source, "warning", attrs))
        return False

    async def _command(self, spec: CommandAction, job: Job) -> None:
        device = spec.device or job.event.get("device")
        if not isinstance(device, str) or not device:
            raise PermanentActionError("command action has no device (none set, none in event)")
        if self.command is not None:
            timeout = spec.timeout_ms / 1000 if spec.timeout_ms else None
            await self.command(
                device,
                spec.action,
                dict(spec.args),
                holder=f"rule:{job.rule_id}",
                correlation=f"rule:{job.rule_id}",
                timeout=timeout,
            )
            return
        if self.session is None:
            raise PermanentActionError("no local broker configured for device commands")
        client = self.session.link
        if client is None:
            raise NotConnectedError("local broker not connected")
        command = DeviceCommand(
            id=uuid.uuid4().hex,
            action=spec.action,
            args=spec.args,
            correlation=f"rule:{job.rule_id}",
            timeout_ms=spec.timeout_ms,
        )
        await client.publish(topics.command(device, command.id), ENCODER.encode(command), qos=1)

    async def _capability(self, spec: CapabilityAction, job: Job) -> None:
        fn = self.capabilities.get(spec.capability)
        if fn is not None:
            result = fn(spec.args, job.event)
            if inspect.isawaitable(result):
                await result
            return
        if self.invoke is None:
            raise PermanentActionError(f"no capability {spec.capability!r} is registered")
        try:
            await self.invoke(spec.capability, dict(spec.args), f"rule:{job.rule_id}")
        except Exception as exc:
            if getattr(exc, "permanent", False):
                raise PermanentActionError(str(exc)) from exc
            raise


async def _hold(link: Link) -> None:  # noqa: ARG001 - commands publish on session.link
    """Keep the connection for commands; nothing is received on it."""
    await asyncio.Event().wait()
