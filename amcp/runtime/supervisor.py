"""A supervision tree on asyncio, after OTP.

A bare ``TaskGroup`` cancels every sibling when one child fails; a supervisor instead catches
each child's failure and applies a strategy:

- ``one_for_one``: restart only the child that stopped;
- ``rest_for_one``: restart it and every child started after it (they depend on it);
- ``one_for_all``: restart every child.

Restarts are bounded by *intensity* within *period* seconds; past that the supervisor stops
its children and raises :class:`EscalationError`, which its parent sees as this child's
failure. Restarts back off exponentially (with jitter) on a :class:`~amcp.runtime.clock.Clock`
that tests control. Children start in order; a child that declares ``wait_ready`` must call
:meth:`ChildContext.ready` before the next one starts (like ``start_link``). Shutdown stops
children in reverse start order, each within its own ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from amcp.runtime.clock import Clock, SystemClock

log = logging.getLogger(__name__)


class Strategy(enum.StrEnum):
    ONE_FOR_ONE = "one_for_one"
    REST_FOR_ONE = "rest_for_one"
    ONE_FOR_ALL = "one_for_all"


class Restart(enum.StrEnum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after a failure
    TEMPORARY = "temporary"  # never restarted


class ChildState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class SupervisorError(Exception):
    """Base of the supervisor's errors."""


class EscalationError(SupervisorError):
    """Restart intensity was exceeded: the supervisor gave up and stopped its children."""

    def __init__(self, supervisor: str, child: str, cause: BaseException | None) -> None:
        super().__init__(
            f"supervisor {supervisor!r}: child {child!r} restarted too often"
            + (f" (last error: {cause!r})" if cause else "")
        )
        self.supervisor = supervisor
        self.child = child
        self.cause = cause


class StartupError(SupervisorError):
    """A child failed or timed out before it reported ready."""


class ChildContext:
    """What a running child gets: its name and a way to say it is ready."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._ready = asyncio.Event()

    def ready(self) -> None:
        self._ready.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()


ChildFn = Callable[[ChildContext], Awaitable[None]]


@dataclass(frozen=True)
class ChildSpec:
    name: str
    run: ChildFn
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0
    wait_ready: bool = False
    ready_timeout: float = 30.0


def holding(
    open_: Callable[[], Awaitable[object]],
    close: Callable[[], Awaitable[object]],
    held: Callable[[], Awaitable[object]] | None = None,
) -> ChildFn:
    """A child that owns a resource (a database): opens it, reports ready, keeps it open
    until stopped, then closes it even while being cancelled. Children started after it
    (rest_for_one) may rely on it being open. ``held()``, when given, is awaited while the
    resource is open: it raises when the resource failed, failing this child, so the
    supervisor opens it again (and restarts what was started after it)."""

    async def run(ctx: ChildContext) -> None:
        await open_()
        ctx.ready()
        try:
            await (held() if held is not None else asyncio.Event().wait())
        finally:
            await asyncio.shield(close())

    return run


async def stop_task(task: asyncio.Task[object], grace: float, attempts: int = 3) -> bool:
    """Cancel ``task`` and wait up to ``grace`` seconds for it, cancelling again if it is
    still running (a clean-up that waits forever, such as aiomqtt's disconnect handshake on
    exit, yields to a second cancellation). True when the task has ended."""
    for _ in range(attempts):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=grace)
    return task.done()


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.1
    maximum: float = 10.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        if attempt <= 0:
            return 0.0
        base = min(self.maximum, self.initial * 2.0 ** (attempt - 1))
        return float(base) * (1 + random.uniform(-self.jitter, self.jitter))


@dataclass
class ChildInfo:
    """A child as the tree reports it (``cybernetic units`` and metrics read this)."""

    name: str
    state: ChildState
    restarts: int
    last_error: str | None = None
    children: list[ChildInfo] = field(default_factory=list)


def tree_json(children: list[ChildInfo]) -> list[dict[str, object]]:
    """A supervision tree as JSON (``cybernetic status``): name, state, restarts, last error."""
    return [
        {
            "name": c.name,
            "state": str(c.state),
            "restarts": c.restarts,
            "last_error": c.last_error,
            "children": tree_json(c.children),
        }
        for c in children
    ]


@dataclass
class _Running:
    spec: ChildSpec
    ctx: ChildContext
    task: asyncio.Task[None]
    generation: int


class Supervisor:
    def __init__(
        self,
        name: str,
        children: list[ChildSpec] | None = None,
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5.0,
        backoff: Backoff | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.backoff = backoff or Backoff()
        self.clock: Clock = clock or SystemClock()
        self._specs: list[ChildSpec] = list(children or [])
        names = [s.name for s in self._specs]
        if len(set(names)) != len(names):
            raise ValueError(f"supervisor {name!r}: duplicate child names in {names}")
        self._running: dict[str, _Running] = {}
        self._restarts: deque[float] = deque()
        self._attempts: dict[str, int] = {}
        self._counts: dict[str, int] = dict.fromkeys(names, 0)
        self._errors: dict[str, str] = {}
        self._states: dict[str, ChildState] = dict.fromkeys(names, ChildState.STOPPED)
        self._exits: asyncio.Queue[tuple[str, int, BaseException | None]] | None = None
        self._generation = 0
        self._subtrees: dict[str, Supervisor] = {}

    # -- composition ----------------------------------------------------------------------
    def as_child(self, shutdown_timeout: float = 30.0) -> ChildSpec:
        """This supervisor as a child of another (it reports ready when its children are)."""
        return ChildSpec(self.name, self.run, Restart.PERMANENT, shutdown_timeout, wait_ready=True)

    def add_child(self, spec: ChildSpec) -> None:
        """Append a child before the tree runs (it starts last, after the others)."""
        if self._exits is not None:
            raise SupervisorError(f"supervisor {self.name!r} is running: add children before")
        if any(s.name == spec.name for s in self._specs):
            raise ValueError(f"supervisor {self.name!r}: duplicate child name {spec.name!r}")
        self._specs.append(spec)
        self._counts[spec.name] = 0
        self._states[spec.name] = ChildState.STOPPED

    def add_subtree(self, supervisor: Supervisor) -> None:
        """Register a nested supervisor so :meth:`tree` can show it."""
        self._subtrees[supervisor.name] = supervisor

    def tree(self) -> list[ChildInfo]:
        return [
            ChildInfo(
                name=s.name,
                state=self._states[s.name],
                restarts=self._counts[s.name],
                last_error=self._errors.get(s.name),
                children=self._subtrees[s.name].tree() if s.name in self._subtrees else [],
            )
            for s in self._specs
        ]

    # -- running --------------------------------------------------------------------------
    async def run(self, ctx: ChildContext | None = None) -> None:
        """Start the children, supervise them until cancelled, then stop them in reverse."""
        self._exits = asyncio.Queue()
        try:
            for spec in self._specs:
                await self._start(spec)
            if ctx is not None:
                ctx.ready()
            while True:
                name, generation, exc = await self._exits.get()
                await self._on_exit(name, generation, exc)
        finally:
            await self._stop_from(0)

    async def _start(self, spec: ChildSpec) -> None:
        assert self._exits is not None
        self._generation += 1
        ctx = ChildContext(spec.name)
        task = asyncio.create_task(
            self._child_main(spec, ctx, self._generation), name=f"{self.name}/{spec.name}"
        )
        self._running[spec.name] = _Running(spec, ctx, task, self._generation)
        self._states[spec.name] = ChildState.STARTING
        if spec.wait_ready:
            ready = asyncio.ensure_future(ctx.wait_ready())
            try:
                done, _ = await asyncio.wait(
                    {ready, task}, timeout=spec.ready_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                ready.cancel()
            if ready not in done and not ctx.is_ready:
                # failed or hung during start-up: handled as an exit of that child
                if not task.done():
                    await self._cancel(self._running[spec.name])
                    self._exits.put_nowait(
                        (spec.name, self._generation, StartupError(f"{spec.name}: not ready"))
                    )
                return
        self._states[spec.name] = ChildState.RUNNING

    async def _child_main(self, spec: ChildSpec, ctx: ChildContext, generation: int) -> None:
        exc: BaseException | None = None
        try:
            await spec.run(ctx)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            exc = e
        if self._exits is not None:
            self._exits.put_nowait((spec.name, generation, exc))

    async def _on_exit(self, name: str, generation: int, exc: BaseException | None) -> None:
        running = self._running.get(name)
        if running is None or running.generation != generation:
            return  # a stale exit of a child already stopped or restarted
        del self._running[name]
        self._states[name] = ChildState.STOPPED
        spec = running.spec
        if exc is not None:
            self._errors[name] = repr(exc)
            log.error(
                "child failed",
                extra={"supervisor": self.name, "child": name, "error": repr(exc)},
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        wanted = spec.restart is Restart.PERMANENT or (
            spec.restart is Restart.TRANSIENT and exc is not None
        )
        if not wanted:
            return
        now = self.clock.monotonic()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - self.period:
            self._restarts.popleft()
        if len(self._restarts) > self.intensity:
            raise EscalationError(self.name, name, exc)
        index = next(i for i, s in enumerate(self._specs) if s.name == name)
        if self.strategy is Strategy.ONE_FOR_ONE:
            to_restart = [spec]
        elif self.strategy is Strategy.REST_FOR_ONE:
            await self._stop_from(index + 1)
            to_restart = self._specs[index:]
        else:
            await self._stop_from(0)
            to_restart = list(self._specs)
        attempt = sum(1 for t in self._restarts if t >= now - self.period)
        delay = self.backoff.delay(attempt)
        if delay > 0:
            for s in to_restart:
                self._states[s.name] = ChildState.BACKOFF
            await self.clock.sleep(delay)
        for s in to_restart:
            self._counts[s.name] += 1
            log.info("child restarted", extra={"supervisor": self.name, "child": s.name})
            await self._start(s)

    async def _stop_from(self, index: int) -> None:
        """Stop children from ``index`` on, last started first."""
        for spec in reversed(self._specs[index:]):
            running = self._running.pop(spec.name, None)
            if running is not None:
                await self._cancel(running)
                self._states[spec.name] = ChildState.STOPPED

    async def _cancel(self, running: _Running) -> None:
        task = running.task
        stopped = await stop_task(task, running.spec.shutdown_timeout, attempts=2)
        if stopped and not task.cancelled() and task.exception() is not None:
            log.error(
                "child raised while stopping",
                extra={"child": running.spec.name, "error": repr(task.exception())},
            )
        if not stopped:
            log.warning(
                "child did not stop in time",
                extra={
                    "supervisor": self.name,
                    "child": running.spec.name,
                    "timeout_s": running.spec.shutdown_timeout,
                },
            )
