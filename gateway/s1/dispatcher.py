"""S1's dispatcher: an intent's lifecycle from ``accepted`` to ``done`` or ``failed``.

An intent names a capability; the dispatcher finds it in the registry, checks the args against
its input schema and the intent's zone against the capability's, admits it through S2's rate
gate (the principal's quota and the capability's: ``RateGate.admit``) and its unit's rate
quota, and carries it out as a device command under the device's S2 lease, turning the
device's replies into :class:`~amcp.wire.messages.IntentUpdate`\\ s::

    accepted → running → (running+progress | result)* → done
                       ↘ failed (timeout, cancelled, unknown_capability, bad_args, device, ...)

Every intent ends with exactly one ``done`` or ``failed``: a timeout, a cancel or a refused
quota is an answer, not silence. The dispatcher knows nothing about MQTT or envelopes; it is
handed an ``emit`` function (the link server seals and publishes; tests collect).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import fastjsonschema

from amcp.wire.messages import FailureCode, Intent, IntentState, IntentUpdate
from gateway.s1.commands import CommandExecutor, NotConnectedError
from gateway.s1.errors import (
    DeviceFailedError,
    DeviceTimeoutError,
    QuotaExceededError,
    S1Error,
    UnknownUnitError,
)
from gateway.s1.registry import CapabilityRecord, CapabilityRegistry
from gateway.s1.settings import S1Settings
from gateway.s1.units import Unit, UnitTree
from gateway.s2.admission import Denied, RateGate, Scope
from gateway.s2.leases import LeaseRefusedError

log = logging.getLogger(__name__)

Emit = Callable[[IntentUpdate], Awaitable[None]]

ANONYMOUS = "anonymous"
"""The principal of an intent that names none (a peer older than principals)."""


def principal_of(intent: Intent) -> str:
    return intent.principal or ANONYMOUS


class _Updates:
    """Numbers one intent's updates and remembers the last (the final answer)."""

    def __init__(self, intent_id: str, emit: Emit) -> None:
        self.intent_id = intent_id
        self._emit = emit
        self.seq = 0
        self.last: IntentUpdate | None = None

    async def send(
        self,
        state: IntentState,
        *,
        data: Any = None,
        progress: float | None = None,
        error: str | None = None,
        code: FailureCode | None = None,
    ) -> IntentUpdate:
        update = IntentUpdate(
            self.intent_id, state, data, error, seq=self.seq, progress=progress, code=code
        )
        self.seq += 1
        self.last = update
        await self._emit(update)
        return update


class _RefusedError(Exception):
    def __init__(self, code: FailureCode, message: str) -> None:
        super().__init__(message)
        self.code: FailureCode = code


def _code_of(exc: Exception) -> FailureCode:
    if isinstance(exc, DeviceTimeoutError):
        return "timeout"
    if isinstance(exc, DeviceFailedError):
        return "device"
    if isinstance(exc, QuotaExceededError | LeaseRefusedError):
        return "refused"
    return "error"


class Dispatcher:
    def __init__(
        self,
        registry: CapabilityRegistry,
        executor: CommandExecutor,
        units: UnitTree,
        settings: S1Settings,
        *,
        on_final: Callable[[float, IntentUpdate], None] | None = None,
        gate: RateGate | None = None,
    ) -> None:
        """``on_final(seconds, update)`` hears of every intent's final answer (a metric);
        ``gate`` is S2's rate gate: each intent is admitted for its principal (the ``user``
        scope) and its capability; without one only the unit quotas apply."""
        self.registry = registry
        self.gate = gate
        self.executor = executor
        self.units = units
        self.settings = settings
        self._on_final = on_final
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: set[str] = set()
        self._validators: dict[str, Callable[[Any], Any]] = {}
        self.completed = 0
        self.failed: dict[str, int] = {}

    @property
    def running(self) -> list[str]:
        return list(self._running)

    def cancel(self, intent_id: str) -> bool:
        """Stop a running intent; it answers ``failed`` with code ``cancelled``."""
        task = self._running.get(intent_id)
        if task is None or task.done():
            return False
        self._cancelled.add(intent_id)
        task.cancel()
        return True

    async def run(self, intent: Intent, emit: Emit, correlation: str | None = None) -> IntentUpdate:
        """Carry out ``intent``, emitting every update; returns the final one."""
        updates = _Updates(intent.intent_id, emit)
        task = asyncio.current_task()
        assert task is not None
        if intent.intent_id in self._running:
            return await self._fail(updates, "refused", f"intent {intent.intent_id} is running")
        if len(self._running) >= self.settings.max_intents:
            limit = self.settings.max_intents
            return await self._fail(updates, "refused", f"{limit} intents already running")
        self._running[intent.intent_id] = task
        started = time.monotonic()
        try:
            await updates.send("accepted")
            return await self._run(intent, updates, correlation)
        except asyncio.CancelledError:
            if intent.intent_id not in self._cancelled or task.uncancel() > 0:
                raise
            return await self._fail(updates, "cancelled", f"intent {intent.intent_id} cancelled")
        finally:
            del self._running[intent.intent_id]
            self._cancelled.discard(intent.intent_id)
            last = updates.last
            if self._on_final is not None and last is not None and last.state in ("done", "failed"):
                self._on_final(time.monotonic() - started, last)

    async def _run(
        self, intent: Intent, updates: _Updates, correlation: str | None
    ) -> IntentUpdate:
        try:
            record, unit = await self._admit(intent)
        except _RefusedError as exc:
            return await self._fail(updates, exc.code, str(exc))
        timeout = (
            intent.timeout_ms / 1000
            if intent.timeout_ms
            else record.timeout_s or self.settings.intent_timeout
        )
        try:
            with unit.running():
                async with asyncio.timeout(timeout):
                    await updates.send("running", progress=0.0)
                    answer = await self._execute(record, intent, updates, correlation, unit)
        except TimeoutError:
            message = (
                f"intent {intent.intent_id} ({record.spec.name}) timed out after {timeout:g} s"
            )
            return await self._fail(updates, "timeout", message)
        except (S1Error, NotConnectedError, LeaseRefusedError) as exc:
            return await self._fail(updates, _code_of(exc), str(exc))
        self.completed += 1
        return await updates.send("done", data=answer)

    async def _admit(self, intent: Intent) -> tuple[CapabilityRecord, Unit]:
        name = intent.capability
        record = await self.registry.get(name) if name else None
        if record is None:
            raise _RefusedError("unknown_capability", f"no capability {name!r} on this gateway")
        self._validate(record, intent.args)
        zone = record.spec.zone
        if intent.zone and zone and intent.zone != zone:
            raise _RefusedError(
                "refused", f"intent from zone {intent.zone!r}: {name!r} serves zone {zone!r}"
            )
        if self.gate is not None:
            decision = self.gate.admit(user=principal_of(intent), capability=name)
            if isinstance(decision, Denied):
                raise _RefusedError("refused", _denied(decision, intent))
        try:
            unit = self.units.find(record.unit)
            unit.admit()
        except (UnknownUnitError, QuotaExceededError) as exc:
            raise _RefusedError("refused", str(exc)) from exc
        return record, unit

    def _validate(self, record: CapabilityRecord, args: dict[str, Any]) -> None:
        schema = record.spec.input_schema
        if not schema:
            return
        key = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()
        validate = self._validators.get(key)
        try:
            if validate is None:
                validate = self._validators[key] = fastjsonschema.compile(schema)
            validate(args)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise _RefusedError(
                "bad_args", f"args for {record.spec.name!r}: {exc.message}"
            ) from None
        except fastjsonschema.JsonSchemaDefinitionException as exc:
            raise _RefusedError("error", f"input schema of {record.spec.name!r}: {exc}") from None

    async def _execute(
        self,
        record: CapabilityRecord,
        intent: Intent,
        updates: _Updates,
        correlation: str | None,
        unit: Unit,
    ) -> Any:
        replies = self.executor.execute(
            record.device,
            record.action,
            intent.args,
            idle_timeout=self.settings.command_timeout,
            correlation=correlation or intent.intent_id,
            unit=unit,
            holder=f"intent:{intent.intent_id}",
        )
        async with contextlib.aclosing(replies) as stream:
            async for reply in stream:
                if reply.state == "progress":
                    await updates.send("running", progress=reply.progress)
                elif reply.state == "partial":
                    await updates.send("result", data=reply.data)
                elif reply.state == "done":
                    return reply.data
        raise DeviceFailedError(record.device, "?", record.action, "replies ended without done")

    async def _fail(self, updates: _Updates, code: FailureCode, message: str) -> IntentUpdate:
        self.failed[code] = self.failed.get(code, 0) + 1
        log.info(
            "intent failed", extra={"intent": updates.intent_id, "code": code, "error": message}
        )
        return await updates.send("failed", error=message, code=code)


def _denied(decision: Denied, intent: Intent) -> str:
    """Which limit refused the intent, e.g. ``principal 'user:ana' is over its quota``."""
    what = "principal" if decision.scope is Scope.USER else str(decision.scope)
    return (
        f"intent {intent.intent_id}: {what} {decision.key!r} is over its quota "
        f"(S2 {decision.scope} limit); retry in {decision.retry_after_s:.2g} s"
    )
