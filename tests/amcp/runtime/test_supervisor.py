"""Supervision tree: restarts, strategies, escalation, staged shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from amcp.runtime.supervisor import (
    Backoff,
    ChildContext,
    ChildSpec,
    EscalationError,
    Restart,
    Strategy,
    Supervisor,
)

NO_BACKOFF = Backoff(initial=0.0)


class Probe:
    """Records starts and stops of named children; a child fails on demand."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.fail: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}

    def child(self, name: str, **kw: object) -> ChildSpec:
        self.fail[name] = asyncio.Event()
        self.started[name] = asyncio.Event()

        async def run(ctx: ChildContext) -> None:
            self.events.append(f"start:{name}")
            ctx.ready()
            self.started[name].set()
            try:
                await self.fail[name].wait()
                self.fail[name].clear()
                raise RuntimeError(f"{name} crashed")
            finally:
                self.events.append(f"stop:{name}")

        return ChildSpec(name, run, wait_ready=True, **kw)  # type: ignore[arg-type]

    async def crash(self, name: str, *, restarted: tuple[str, ...] = ()) -> None:
        """Crash ``name`` and wait until it and each of ``restarted`` started again."""
        waiting = (name, *restarted)
        for n in waiting:
            self.started[n].clear()
        self.fail[name].set()
        async with asyncio.timeout(5):
            for n in waiting:
                await self.started[n].wait()


async def _running(sup: Supervisor) -> tuple[asyncio.Task[None], ChildContext]:
    ctx = ChildContext(sup.name)
    task = asyncio.create_task(sup.run(ctx))
    async with asyncio.timeout(5):
        await ctx.wait_ready()
    return task, ctx


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_crashing_child_restarts_while_siblings_keep_running() -> None:
    p = Probe()
    sup = Supervisor("root", [p.child("a"), p.child("b"), p.child("c")], backoff=NO_BACKOFF)
    task, _ = await _running(sup)
    await p.crash("b")
    assert p.events == ["start:a", "start:b", "start:c", "stop:b", "start:b"]
    assert [c.restarts for c in sup.tree()] == [0, 1, 0]
    await _stop(task)


async def test_rest_for_one_restarts_the_child_and_those_started_after_it() -> None:
    p = Probe()
    sup = Supervisor(
        "root",
        [p.child("a"), p.child("b"), p.child("c")],
        strategy=Strategy.REST_FOR_ONE,
        backoff=NO_BACKOFF,
    )
    task, _ = await _running(sup)
    p.events.clear()
    await p.crash("b", restarted=("c",))
    assert p.events == ["stop:b", "stop:c", "start:b", "start:c"]
    await _stop(task)


async def test_one_for_all_restarts_everyone() -> None:
    p = Probe()
    sup = Supervisor(
        "root", [p.child("a"), p.child("b")], strategy=Strategy.ONE_FOR_ALL, backoff=NO_BACKOFF
    )
    task, _ = await _running(sup)
    p.events.clear()
    await p.crash("a", restarted=("b",))
    assert p.events == ["stop:a", "stop:b", "start:a", "start:b"]
    await _stop(task)


async def test_exceeding_intensity_escalates_to_the_parent() -> None:
    p = Probe()
    inner = Supervisor("inner", [p.child("x")], intensity=2, period=60, backoff=NO_BACKOFF)
    outer_events: list[str] = []

    async def sibling(ctx: ChildContext) -> None:
        outer_events.append("sibling")
        ctx.ready()
        await asyncio.Event().wait()

    outer = Supervisor(
        "outer",
        [inner.as_child(), ChildSpec("sibling", sibling, wait_ready=True)],
        intensity=0,
        backoff=NO_BACKOFF,
    )
    outer.add_subtree(inner)
    task, _ = await _running(outer)
    await p.crash("x")
    await p.crash("x")
    p.fail["x"].set()  # third crash within the period: more than intensity 2
    with pytest.raises(EscalationError) as err:
        async with asyncio.timeout(5):
            await task
    # the outer supervisor was allowed no restarts: it escalated the inner's escalation
    assert err.value.supervisor == "outer"
    assert err.value.child == "inner"
    assert isinstance(err.value.cause, EscalationError)
    assert err.value.cause.child == "x"
    assert p.events[-1] == "stop:x"


async def test_transient_and_temporary_children() -> None:
    runs: dict[str, int] = {"t": 0, "tmp": 0}

    def finisher(name: str, fail: bool) -> Callable[[ChildContext], object]:
        async def run(ctx: ChildContext) -> None:
            runs[name] += 1
            if fail and runs[name] == 1:
                raise RuntimeError("boom")

        return run

    sup = Supervisor(
        "root",
        [
            ChildSpec("t", finisher("t", fail=True), Restart.TRANSIENT),  # type: ignore[arg-type]
            ChildSpec("tmp", finisher("tmp", fail=True), Restart.TEMPORARY),  # type: ignore[arg-type]
        ],
        backoff=NO_BACKOFF,
    )
    task = asyncio.create_task(sup.run())
    for _ in range(50):
        await asyncio.sleep(0.01)
    # transient: restarted after its failure, then finished normally and stayed down
    assert runs == {"t": 2, "tmp": 1}
    await _stop(task)


async def test_shutdown_runs_in_reverse_start_order_within_timeouts() -> None:
    order: list[str] = []

    def child(name: str, stubborn: bool = False) -> ChildSpec:
        async def run(ctx: ChildContext) -> None:
            ctx.ready()
            try:
                await asyncio.Event().wait()
            finally:
                order.append(name)
                if stubborn:  # ignores cancellation for longer than its timeout
                    await asyncio.shield(asyncio.sleep(1.0))

        return ChildSpec(name, run, wait_ready=True, shutdown_timeout=0.2)

    sup = Supervisor("root", [child("first"), child("second", stubborn=True), child("third")])
    task, _ = await _running(sup)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await _stop(task)
    assert order == ["third", "second", "first"]
    # the stubborn child was abandoned after its own timeout, not waited for
    assert loop.time() - t0 < 0.9


async def test_child_that_never_becomes_ready_is_restarted_and_escalates() -> None:
    async def hangs(ctx: ChildContext) -> None:
        await asyncio.Event().wait()

    sup = Supervisor(
        "root",
        [ChildSpec("hang", hangs, wait_ready=True, ready_timeout=0.05)],
        intensity=1,
        backoff=NO_BACKOFF,
    )
    with pytest.raises(EscalationError):
        async with asyncio.timeout(5):
            await sup.run()


def test_backoff_grows_and_is_capped() -> None:
    b = Backoff(initial=0.1, maximum=1.0, jitter=0.0)
    assert [b.delay(n) for n in range(6)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]


async def test_a_holding_child_opens_before_its_siblings_and_closes_after_them() -> None:
    from amcp.runtime.supervisor import holding  # noqa: PLC0415

    events: list[str] = []

    async def open_() -> None:
        events.append("open")

    async def close() -> None:
        events.append("close")

    async def user(ctx: ChildContext) -> None:
        events.append("user up")
        ctx.ready()
        try:
            await asyncio.Event().wait()
        finally:
            events.append("user down")

    sup = Supervisor(
        "root",
        [
            ChildSpec("db", holding(open_, close), wait_ready=True),
            ChildSpec("user", user, wait_ready=True),
        ],
    )
    task, _ = await _running(sup)
    await _stop(task)
    assert events == ["open", "user up", "user down", "close"]


async def test_stop_task_cancels_again_a_clean_up_that_would_wait_forever() -> None:
    from amcp.runtime.supervisor import stop_task  # noqa: PLC0415

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:  # like aiomqtt's disconnect handshake on exit: waits for an answer forever
            await asyncio.Event().wait()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await stop_task(task, grace=0.05)
    assert task.cancelled()
