"""Delegation: child units, each a viable system inside the gateway's viable system.

A :class:`Unit` stands for a device group or a process line. It runs its own
:class:`~amcp.runtime.supervisor.Supervisor` over its workers, and it has quotas: how many
child units it may have, how many intents per second it admits (a GCRA budget from S2) and how
many bytes of state it may buffer (device replies waiting to be forwarded). A
:class:`UnitTree` owns every unit: spawning checks, in this order, the spawn-storm breaker,
the recursion depth limit, the parent's child quota and the name; a refused spawn raises a
:class:`~gateway.s1.errors.SpawnRefusedError` subclass that says which. Each unit's supervisor
runs as a task of the tree's own task group, so stopping the tree stops every unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from amcp.runtime.clock import Clock
from amcp.runtime.supervisor import ChildContext, ChildInfo, ChildSpec, Supervisor
from gateway.s1.breaker import SpawnBreaker
from gateway.s1.errors import (
    ChildQuotaError,
    DepthLimitError,
    MemoryQuotaError,
    RateQuotaError,
    UnitExistsError,
    UnknownUnitError,
)
from gateway.s1.settings import BreakerSettings, QuotaSettings
from gateway.s2.config import RateLimit
from gateway.s2.limiter import Budget

log = logging.getLogger(__name__)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class Unit:
    def __init__(
        self,
        name: str,
        path: str,
        *,
        depth: int,
        quotas: QuotaSettings,
        clock: Clock,
        workers: Sequence[ChildSpec] = (),
    ) -> None:
        self.name = name
        self.path = path
        self.depth = depth
        self.quotas = quotas
        self.children: dict[str, Unit] = {}
        self.supervisor = Supervisor(f"unit:{path or '/'}", list(workers), clock=clock)
        self._budget = Budget(RateLimit(quotas.max_rate, quotas.burst), clock.monotonic)
        self.buffered_bytes = 0
        self.active = 0
        self.admitted = 0
        self.refused = 0
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None

    def admit(self) -> None:
        """Take one message from the unit's rate budget or raise :class:`RateQuotaError`."""
        if self._budget.take(1) != 1:
            self.refused += 1
            raise RateQuotaError(self.path, self.quotas.max_rate)
        self.admitted += 1

    def reserve(self, nbytes: int) -> None:
        """Count ``nbytes`` more buffered state, or raise :class:`MemoryQuotaError`."""
        wanted = self.buffered_bytes + nbytes
        if wanted > self.quotas.max_buffer_bytes:
            raise MemoryQuotaError(self.path, wanted, self.quotas.max_buffer_bytes)
        self.buffered_bytes = wanted

    def release(self, nbytes: int) -> None:
        self.buffered_bytes = max(0, self.buffered_bytes - nbytes)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Mark one piece of work (an intent) as running in this unit."""
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    @property
    def state(self) -> str:
        if self.error is not None:
            return "failed"
        return "running" if self.task is not None and not self.task.done() else "stopped"

    def walk(self) -> Iterator[Unit]:
        yield self
        for child in self.children.values():
            yield from child.walk()

    def describe(self) -> dict[str, Any]:
        q = self.quotas
        return {
            "name": self.name or "/",
            "path": self.path,
            "depth": self.depth,
            "state": self.state,
            "error": self.error,
            "quotas": {
                "max_children": q.max_children,
                "max_rate": q.max_rate,
                "burst": q.burst,
                "max_buffer_bytes": q.max_buffer_bytes,
            },
            "usage": {
                "children": len(self.children),
                "buffered_bytes": self.buffered_bytes,
                "active_intents": self.active,
                "admitted": self.admitted,
                "refused": self.refused,
            },
            "workers": [_info(i) for i in self.supervisor.tree()],
            "children": [c.describe() for c in self.children.values()],
        }


def _info(info: ChildInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "state": str(info.state),
        "restarts": info.restarts,
        "last_error": info.last_error,
        "children": [_info(c) for c in info.children],
    }


class UnitTree:
    """Every unit of one gateway, the root first; spawn and stop them while it runs."""

    def __init__(
        self,
        gateway: str,
        *,
        root_quotas: QuotaSettings,
        max_depth: int,
        breaker: BreakerSettings,
        clock: Clock,
    ) -> None:
        self.gateway = gateway
        self.max_depth = max_depth
        self.clock = clock
        self.breaker = SpawnBreaker(breaker, clock)
        self.root = Unit("", "", depth=0, quotas=root_quotas, clock=clock)
        self._tg: asyncio.TaskGroup | None = None

    def find(self, path: str) -> Unit:
        unit = self.root
        for part in (p for p in path.split("/") if p):
            child = unit.children.get(part)
            if child is None:
                raise UnknownUnitError(path)
            unit = child
        return unit

    def spawn(
        self,
        parent: str,
        name: str,
        quotas: QuotaSettings | None = None,
        workers: Sequence[ChildSpec] = (),
    ) -> Unit:
        """Start unit ``name`` under ``parent`` (a path, ``""`` for the root)."""
        path = _join(parent, name)
        self.breaker.attempt(path)
        owner = self.find(parent)
        depth = owner.depth + 1
        if depth > self.max_depth:
            raise DepthLimitError(path, depth, self.max_depth)
        if name in owner.children:
            raise UnitExistsError(path)
        if len(owner.children) >= owner.quotas.max_children:
            raise ChildQuotaError(parent, owner.quotas.max_children)
        if not name or "/" in name:
            raise ValueError(f"unit name {name!r} must be non-empty and contain no '/'")
        unit = Unit(
            name,
            path,
            depth=depth,
            quotas=quotas or owner.quotas,
            clock=self.clock,
            workers=workers,
        )
        owner.children[name] = unit
        if self._tg is not None:
            self._start(unit)
        log.info("unit spawned", extra={"unit": path, "depth": depth})
        return unit

    def spawn_path(self, path: str, quotas: QuotaSettings | None = None) -> Unit:
        """Spawn ``path`` and any missing units above it (configured units)."""
        parts = [p for p in path.split("/") if p]
        unit = self.root
        for i, part in enumerate(parts):
            existing = unit.children.get(part)
            last = i == len(parts) - 1
            if existing is not None and not last:
                unit = existing
                continue
            unit = self.spawn(unit.path, part, quotas if last else None)
        return unit

    async def stop(self, path: str) -> None:
        """Stop a unit and everything below it (deepest first)."""
        unit = self.find(path)
        if unit is self.root:
            raise ValueError("the root unit stops with the tree")
        for u in reversed(list(unit.walk())):
            if u.task is not None:
                u.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await u.task
        parent = self.find(path.rpartition("/")[0])
        del parent.children[unit.name]

    def _start(self, unit: Unit) -> None:
        assert self._tg is not None
        unit.task = self._tg.create_task(self._run_unit(unit), name=f"unit:{unit.path or '/'}")

    @staticmethod
    async def _run_unit(unit: Unit) -> None:
        """A unit whose supervisor gives up is marked failed; its siblings keep running."""
        try:
            await unit.supervisor.run()
        except Exception as exc:
            unit.error = repr(exc)
            log.exception("unit failed", extra={"unit": unit.path})

    async def run(self, ctx: ChildContext) -> None:
        """Run every unit's supervisor until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for unit in self.root.walk():
                    self._start(unit)
                ctx.ready()
                await asyncio.Event().wait()
        finally:
            self._tg = None

    def describe(self) -> dict[str, Any]:
        """The whole tree as JSON-ready data (what ``cybernetic units`` prints)."""
        return {
            "gateway": self.gateway,
            "max_depth": self.max_depth,
            "breaker": self.breaker.state(),
            "root": self.root.describe(),
        }
