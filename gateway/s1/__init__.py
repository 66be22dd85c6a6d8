"""S1 on the gateway: capabilities, intent dispatch with streamed results, delegation.

The integrator's entry point is :class:`S1`: build it with the ``[s1]`` settings, the CRDT
store (or a path for S1 to open one), the gateway↔cloud link and both broker connections, then
add :meth:`S1.child_specs` to the gateway's supervisor. S2's rate gate and lease table come in
as constructor arguments (built before S1): every intent is admitted for its principal and
capability, and every device command (:meth:`S1.command`: intents, rule actions, desired
twins) takes the device's lease. Its own tree (rest_for_one)::

    s1
    ├── s1-store     only when S1 was given a path: opens (and closes) its own store
    ├── s1-units     loads configured capabilities and units, runs every unit's
    │                supervisor, writes the unit tree file
    ├── s1-devices   device commands over the local broker
    └── s1-link      intents and updates over the cloud broker, retained announcement

Simulated devices answer commands with :class:`~gateway.s1.responder.DeviceResponder`.
docs/s1.md has the design, topics and configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from amcp.link import GatewayLink
from amcp.runtime.clock import Clock, SystemClock
from amcp.runtime.session import Transport
from amcp.runtime.settings import BrokerLink
from amcp.runtime.storage import is_storage_full
from amcp.runtime.supervisor import ChildContext, ChildSpec, Strategy, Supervisor
from amcp.store import Store
from amcp.wire.messages import Intent, IntentUpdate
from amcp.wire.telemetry import EventRecord
from gateway.s1.commands import CommandExecutor
from gateway.s1.dispatcher import Dispatcher
from gateway.s1.errors import (
    CapabilityFailedError,
    ChildQuotaError,
    CommandError,
    DepthLimitError,
    DeviceFailedError,
    DeviceTimeoutError,
    MemoryQuotaError,
    QuotaExceededError,
    RateQuotaError,
    S1Error,
    SpawnBreakerOpenError,
    SpawnRefusedError,
    UnitExistsError,
    UnknownUnitError,
)
from gateway.s1.registry import CapabilityRecord, CapabilityRegistry
from gateway.s1.responder import DeviceResponder, Done, Partial, Progress
from gateway.s1.server import LinkServer
from gateway.s1.settings import (
    BreakerSettings,
    CapabilityConfig,
    QuotaSettings,
    S1Settings,
    UnitConfig,
)
from gateway.s1.treefile import read_tree, write_tree
from gateway.s1.units import Unit, UnitTree
from gateway.s2.admission import RateGate
from gateway.s2.leases import LeaseRefusedError, LeaseTable

log = logging.getLogger(__name__)

__all__ = [
    "S1",
    "BreakerSettings",
    "CapabilityConfig",
    "CapabilityFailedError",
    "CapabilityRecord",
    "CapabilityRegistry",
    "ChildQuotaError",
    "CommandError",
    "CommandExecutor",
    "DepthLimitError",
    "DeviceFailedError",
    "DeviceResponder",
    "DeviceTimeoutError",
    "Dispatcher",
    "Done",
    "LeaseRefusedError",
    "LinkServer",
    "MemoryQuotaError",
    "Partial",
    "Progress",
    "QuotaExceededError",
    "QuotaSettings",
    "RateQuotaError",
    "S1Error",
    "S1Settings",
    "SpawnBreakerOpenError",
    "SpawnRefusedError",
    "Unit",
    "UnitConfig",
    "UnitExistsError",
    "UnitTree",
    "UnknownUnitError",
    "plan_moves",
    "read_tree",
    "write_tree",
]


Carriers = Mapping[str, tuple[str, list[str]]]
"""capability -> (the device carrying it out, its standby devices in order)"""


def plan_moves(
    carriers: Carriers, zombie: str, healthy: Callable[[str], bool]
) -> dict[str, tuple[str, list[str]]]:
    """Where each capability of ``zombie`` goes: its first healthy standby, with the zombie
    moved to the end of the standby list. Capabilities with no healthy standby stay."""
    moves: dict[str, tuple[str, list[str]]] = {}
    for name, (device, standby) in carriers.items():
        if device != zombie:
            continue
        target = next((d for d in standby if d != zombie and healthy(d)), None)
        if target is not None:
            moves[name] = (target, [d for d in standby if d not in (target, zombie)] + [zombie])
    return moves


class S1:
    def __init__(
        self,
        settings: S1Settings,
        store: Store | Path,
        link: GatewayLink,
        *,
        gateway: str,
        local_broker: BrokerLink,
        cloud_broker: BrokerLink,
        state_dir: Path,
        clock: Clock | None = None,
        transport: Transport | None = None,
        on_intent_final: Callable[[float, IntentUpdate], None] | None = None,
        gate: RateGate | None = None,
        leases: LeaseTable | None = None,
        report: Callable[[list[EventRecord]], object] | None = None,
    ) -> None:
        """``gate`` and ``leases`` are S2's (docs/s2.md, "Wiring"); without a lease table S1
        keeps its own, so device commands are serialized per device in every setup."""
        self.settings = settings
        self.gateway = gateway
        self.clock: Clock = clock or SystemClock()
        self._store_path = store if isinstance(store, Path) else None
        self.store = Store(store, site=gateway) if isinstance(store, Path) else store
        self.tree_path = state_dir / settings.tree_file
        self.registry = CapabilityRegistry(self.store, gateway, now=self.clock.time)
        self._carriers = {c.name: (c.device, list(c.standby)) for c in settings.capabilities}
        self._report = report
        """Where ``s1.capability.reassigned`` events go (the gateway's event writer)."""
        self._assigning: set[asyncio.Task[bool]] = set()
        self.units = UnitTree(
            gateway,
            root_quotas=settings.root_quotas,
            max_depth=settings.max_depth,
            breaker=settings.breaker,
            clock=self.clock,
        )
        self.executor = CommandExecutor(
            local_broker, f"{gateway}-s1-devices", transport=transport, leases=leases
        )
        self.leases = self.executor.leases
        self.dispatcher = Dispatcher(
            self.registry,
            self.executor,
            self.units,
            settings,
            on_final=on_intent_final,
            gate=gate,
        )
        self.server = LinkServer(
            gateway,
            settings,
            broker=cloud_broker,
            link=link,
            dispatcher=self.dispatcher,
            registry=self.registry,
            transport=transport,
        )
        owned = (
            []
            if self._store_path is None
            else [ChildSpec("s1-store", self._run_store, wait_ready=True, shutdown_timeout=10)]
        )
        self.supervisor = Supervisor(
            "s1",
            [
                *owned,
                ChildSpec("s1-units", self._run_units, wait_ready=True, shutdown_timeout=10),
                ChildSpec("s1-devices", self.executor.run, shutdown_timeout=5),
                ChildSpec("s1-link", self.server.run, shutdown_timeout=5),
            ],
            strategy=Strategy.REST_FOR_ONE,
            intensity=5,
            period=30,
            clock=self.clock,
        )

    def child_specs(self) -> list[ChildSpec]:
        """What the gateway's supervisor runs: S1's own supervisor as one child."""
        return [self.supervisor.as_child(shutdown_timeout=20)] if self.settings.enabled else []

    async def _run_store(self, ctx: ChildContext) -> None:
        """Open the store S1 owns; a fresh one on every (re)start, since a closed one is done."""
        assert self._store_path is not None
        store = Store(self._store_path, site=self.gateway)
        await store.open()
        self.store = self.registry.store = store
        ctx.ready()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(store.close())

    async def _run_units(self, ctx: ChildContext) -> None:
        await self.registry.sync_config(self.settings.capabilities)
        for unit in self.settings.units:
            if not self._exists(unit.path):
                try:
                    self.units.spawn_path(unit.path, unit.quotas)
                except SpawnRefusedError:
                    log.exception("configured unit refused", extra={"unit": unit.path})
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.units.run(ctx), name="s1-unit-tree")
            tg.create_task(self._write_tree_loop(), name="s1-tree-file")

    def _exists(self, path: str) -> bool:
        try:
            self.units.find(path)
        except UnknownUnitError:
            return False
        return True

    async def invoke(
        self,
        capability: str,
        args: dict[str, Any],
        correlation: str,
        *,
        principal: str = "service:rules",
    ) -> Any:
        """Carry out a capability for the gateway itself (a rule's action) with everything an
        intent from the cloud gets: schema check, principal and unit quotas, the lease,
        timeouts, the device protocol. Returns the final answer's data; raises
        :class:`CapabilityFailedError` otherwise. Its signature is the rules' ``Invoke``: the
        daemon hands it to the action runner."""
        intent = Intent(
            f"local-{uuid.uuid4().hex[:12]}", "", capability, dict(args), principal=principal
        )

        async def nobody(_update: IntentUpdate) -> None:
            return None

        final = await self.dispatcher.run(intent, nobody, correlation=correlation)
        if final.state != "done":
            raise CapabilityFailedError(capability, final.code or "error", final.error or "")
        return final.data

    async def command(
        self,
        device: str,
        action: str,
        args: dict[str, Any],
        *,
        holder: str,
        correlation: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the device's silence limit
    ) -> Any:
        """One device command for the gateway itself (a rule's command action, a desired
        twin): the device's lease as ``holder`` (queued behind earlier commands, FIFO), the
        device protocol, ``timeout`` (default ``command_timeout``) for a silent device.
        Returns the ``done`` reply's data; raises :class:`LeaseRefusedError`,
        :class:`CommandError` (the device failed or said nothing) or ``NotConnectedError``."""
        replies = self.executor.execute(
            device,
            action,
            args,
            idle_timeout=timeout or self.settings.command_timeout,
            correlation=correlation,
            holder=holder,
        )
        async with contextlib.aclosing(replies) as stream:
            async for reply in stream:
                if reply.state == "done":
                    return reply.data
        raise DeviceFailedError(device, "?", action, "replies ended without done")

    def reassign(self, unit: str, kind: str, *, healthy: Callable[[str], bool]) -> bool:
        """S2's zombie hook: every capability the zombie device ``unit`` carries out moves to
        its first ``healthy`` standby, and the zombie becomes its last standby.

        Synchronous, as S2 calls it from its check; the registry rows (synced to the cloud,
        re-announced) are written on a task. A recovered device takes nothing back: its work
        stays where it is until the new carrier fails too. Returns whether anything moved.
        """
        if kind != "device":
            return False
        moves = plan_moves(self._carriers, unit, healthy)
        now = int(time.time() * 1000)
        moved = []
        for name, (device, standby) in moves.items():
            self._carriers[name] = (device, standby)
            attrs = {"capability": name, "from": unit, "to": device, "standby": standby}
            moved.append(EventRecord("s1.capability.reassigned", now, name, "warning", attrs))
            log.warning(
                "capability moved to a standby device",
                extra={"capability": name, "zombie": unit, "device": device},
            )
            task = asyncio.get_running_loop().create_task(
                self.registry.assign(name, device, standby), name=f"s1-assign-{name}"
            )
            self._assigning.add(task)
            task.add_done_callback(self._assigned)
        if moved and self._report is not None:
            self._report(moved)  # audited on the gateway (gateway.audit) and sent up
        return bool(moves)

    def _assigned(self, task: asyncio.Task[bool]) -> None:
        self._assigning.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("writing a capability's new device failed", exc_info=task.exception())

    def describe(self) -> dict[str, Any]:
        """Everything ``cybernetic units`` shows: the unit tree and S1's own state."""
        data = self.units.describe()
        data["written_at"] = self.clock.time()
        data["intents_running"] = self.dispatcher.running
        data["intents_completed"] = self.dispatcher.completed
        data["intents_failed"] = dict(self.dispatcher.failed)
        data["link_connected"] = self.server.connected
        data["devices_connected"] = self.executor.connected
        data["announced_version"] = self.server.announced_version
        return data

    async def write_tree(self) -> None:
        await asyncio.to_thread(write_tree, self.tree_path, self.describe())

    async def _write_tree_loop(self) -> None:
        full = False
        while True:
            try:
                await self.write_tree()
                full = False
            except OSError as exc:
                if not is_storage_full(exc):
                    raise
                if not full:  # a status file: skip it while the disk is full, say so once
                    log.warning("unit tree not written: disk full", extra={"error": str(exc)})
                full = True
            await asyncio.sleep(self.settings.tree_interval)
