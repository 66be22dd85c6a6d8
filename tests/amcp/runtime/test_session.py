"""The session runner's conformance suite: every case runs on the in-memory broker and on a
real Mosquitto (killed, restarted, refusing a login, stopped with SIGSTOP to hold a connect or
a subscribe), so a unit test on the memory transport means what it would mean on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from amcp.runtime.membroker import MemoryBroker
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import (
    Connection,
    DirectCallback,
    Link,
    LinkLostError,
    Message,
    Session,
    SessionSpec,
    Transport,
    connect_once,
)
from amcp.runtime.settings import BrokerLink
from cybernetic.mosquitto import MosquittoBroker
from tests.conftest import SERVICE_ACCOUNTS

BOUND_S = 8.0
"""Every wait in these tests ends within this; a hang is a failure, not a slow pass."""


class Broker:
    """What a conformance case does to a broker, on either kind."""

    transport: Transport

    def link(self, *, password: str | None = None) -> BrokerLink:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError


class InMemory(Broker):
    def __init__(self) -> None:
        self.broker = MemoryBroker(passwords=dict(SERVICE_ACCOUNTS))
        self.transport = self.broker.transport

    def link(self, *, password: str | None = None) -> BrokerLink:
        return BrokerLink(
            username="gateway",
            password=password or SERVICE_ACCOUNTS["gateway"],
            reconnect_initial=0.05,
            reconnect_max=0.2,
        )

    def kill(self) -> None:
        self.broker.kill()

    def start(self) -> None:
        self.broker.start()

    def pause(self) -> None:
        self.broker.pause()

    def resume(self) -> None:
        self.broker.resume()


class Real(Broker):
    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.transport = MqttTransport()
        self.paused = False

    def link(self, *, password: str | None = None) -> BrokerLink:
        return BrokerLink(
            port=self.broker.port,
            username="gateway",
            password=password or SERVICE_ACCOUNTS["gateway"],
            reconnect_initial=0.05,
            reconnect_max=0.2,
        )

    def kill(self) -> None:
        self.broker.kill()

    def start(self) -> None:
        self.broker.start()

    def pause(self) -> None:
        assert self.broker.pid is not None
        os.kill(self.broker.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.broker.pid is not None:
            os.kill(self.broker.pid, signal.SIGCONT)
        self.paused = False


@pytest.fixture(params=["memory", "mosquitto"])
def under_test(
    request: pytest.FixtureRequest, broker_factory: Callable[[], MosquittoBroker]
) -> Iterator[Broker]:
    if request.param == "memory":
        yield InMemory()
        return
    real = Real(broker_factory())
    yield real
    real.resume()  # never leave a stopped broker for the fixture to wait on


def spec(*subscriptions: str, **kw: object) -> SessionSpec:
    return SessionSpec(f"c-{uuid.uuid4().hex[:10]}", tuple(subscriptions), **kw)  # type: ignore[arg-type]


@dataclass
class Recorder:
    """A handler that records its messages and how it ended."""

    messages: list[Message] = field(default_factory=list)
    started: int = 0
    ended: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    running: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, link: Link) -> None:
        self.started += 1
        self.running.set()
        try:
            async for message in link.messages():
                self.messages.append(message)
                self.arrived.set()
        finally:
            self.ended += 1
            self.running.clear()


async def publish(b: Broker, topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with connect_once(b.transport, b.link(), spec()) as link:
        await link.publish(topic, payload, qos=1, retain=retain)


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(BOUND_S):
        while not predicate():  # noqa: ASYNC110 - polls state the code under test owns
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(
    session: Session, handler: Callable[[Link], object], **kw: object
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(session.run(handler, **kw))  # type: ignore[arg-type]
    try:
        yield task
    finally:
        task.cancel()
        async with asyncio.timeout(BOUND_S):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def stopped_within_bound(task: asyncio.Task[None]) -> None:
    """Cancel ``task``: it must end with CancelledError, and soon."""
    task.cancel()
    async with asyncio.timeout(BOUND_S):
        with pytest.raises(asyncio.CancelledError):
            await task


# -- messages -------------------------------------------------------------------------------
async def test_the_handler_gets_retained_then_published_messages(
    under_test: Broker, topic: str
) -> None:
    await publish(under_test, f"{topic}/state", b"kept", retain=True)
    session = Session(under_test.transport, under_test.link(), spec(f"{topic}/#"), name="t")
    rec = Recorder()
    async with running(session, rec):
        await until(lambda: len(rec.messages) == 1)
        await publish(under_test, f"{topic}/a", b"1")
        await publish(under_test, f"{topic}/b", b"2")
        await until(lambda: len(rec.messages) == 3)
    first, *rest = rec.messages
    assert (first.topic, first.payload, first.retain) == (f"{topic}/state", b"kept", True)
    assert [(m.topic, m.payload, m.retain) for m in rest] == [
        (f"{topic}/a", b"1", False),
        (f"{topic}/b", b"2", False),
    ]
    await publish(under_test, f"{topic}/state", b"", retain=True)  # clears it


# -- losing the broker ----------------------------------------------------------------------
async def test_a_killed_broker_stops_the_handler_and_a_restart_resumes_it(
    under_test: Broker, topic: str
) -> None:
    session = Session(under_test.transport, under_test.link(), spec(f"{topic}/#"), name="t")
    rec = Recorder()
    connected: list[bool] = []
    async with running(session, rec, on_connected=lambda: connected.append(True)):
        await until(lambda: session.connected)
        under_test.kill()
        await until(lambda: rec.ended == 1 and not session.connected)
        await asyncio.sleep(0.3)  # a few reconnect attempts fail meanwhile
        assert rec.started == 1
        under_test.start()
        await until(lambda: session.connected and rec.started == 2)
        await publish(under_test, f"{topic}/x", b"after")
        await until(lambda: bool(rec.messages))
    assert len(connected) == 2
    assert session.losses >= 2  # the kill, then at least one refused reconnect
    assert rec.messages[-1].payload == b"after"


async def test_a_refused_login_is_retried_and_never_reaches_the_handler(
    under_test: Broker,
) -> None:
    session = Session(
        under_test.transport, under_test.link(password="wrong"), spec("x/#"), name="t"
    )
    rec = Recorder()
    async with running(session, rec) as task:
        await until(lambda: session.losses >= 2)
        assert not task.done()
    assert session.refused
    assert rec.started == 0
    assert session.connects == 0


# -- stop requests ----------------------------------------------------------------------------
async def test_stop_while_connecting(under_test: Broker) -> None:
    under_test.pause()
    session = Session(under_test.transport, under_test.link(), spec("x/#"), name="t")
    task = asyncio.create_task(session.run(Recorder()))
    await asyncio.sleep(0.5)
    assert not session.connected
    await stopped_within_bound(task)
    under_test.resume()
    assert session.connects == 0


class PausesAfterConnect:
    """A transport that stops the broker right after the connection is made."""

    def __init__(self, b: Broker) -> None:
        self.b = b

    async def connect(
        self, broker: BrokerLink, spec: SessionSpec, on_message: DirectCallback | None
    ) -> Connection:
        conn = await self.b.transport.connect(broker, spec, on_message)
        self.b.pause()
        return conn


async def test_stop_while_subscribing(under_test: Broker) -> None:
    session = Session(PausesAfterConnect(under_test), under_test.link(), spec("x/#"), name="t")
    rec = Recorder()
    task = asyncio.create_task(session.run(rec))
    await asyncio.sleep(0.5)
    assert not session.connected  # the subscribe never completed
    await stopped_within_bound(task)
    under_test.resume()
    assert rec.started == 0


async def test_stop_while_the_handler_runs(under_test: Broker, topic: str) -> None:
    session = Session(under_test.transport, under_test.link(), spec(f"{topic}/#"), name="t")
    rec = Recorder()
    task = asyncio.create_task(session.run(rec))
    await until(rec.running.is_set)
    await stopped_within_bound(task)
    assert rec.ended == 1
    assert not session.connected


async def test_stop_while_backing_off(under_test: Broker) -> None:
    under_test.kill()
    session = Session(under_test.transport, under_test.link(), spec(), name="t")
    task = asyncio.create_task(session.run(Recorder()))
    await until(lambda: session.losses >= 1)
    await stopped_within_bound(task)
    under_test.start()


# -- how a handler ends -------------------------------------------------------------------------
async def test_a_handler_failure_propagates_and_is_not_retried(under_test: Broker) -> None:
    session = Session(under_test.transport, under_test.link(), spec(), name="t")

    async def broken(link: Link) -> None:
        raise ValueError("a bug")

    async with asyncio.timeout(BOUND_S):
        with pytest.raises(ValueError, match="a bug"):
            await session.run(broken)
    assert session.connects == 1


async def test_a_lost_link_inside_a_handler_reconnects(under_test: Broker, topic: str) -> None:
    session = Session(under_test.transport, under_test.link(), spec(), name="t")
    calls = 0

    async def flaky(link: Link) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            async with asyncio.TaskGroup() as tg:  # a group of lost links is a lost link too
                tg.create_task(_raise(LinkLostError("gone")))
        await link.publish(f"{topic}/ok", b"1")

    async with asyncio.timeout(BOUND_S):
        await session.run(flaky)  # returns: the handler returned on its second connection
    assert calls == 2
    assert session.connects == 2


async def _raise(exc: BaseException) -> None:
    raise exc


async def test_publish_on_a_lost_link_raises_link_lost(under_test: Broker) -> None:
    async def publish_until_refused(link: Link) -> None:
        while True:  # the client may need a moment to notice
            await link.publish("x/y", b"1")
            await asyncio.sleep(0.05)

    async with connect_once(under_test.transport, under_test.link(), spec()) as link:
        under_test.kill()
        async with asyncio.timeout(BOUND_S):
            with pytest.raises(LinkLostError):
                await publish_until_refused(link)
    under_test.start()


# -- persistent sessions and manual acknowledgement ------------------------------------------
async def test_a_persistent_session_gets_again_what_it_did_not_acknowledge(
    under_test: Broker, topic: str
) -> None:
    """What ingest relies on: unacknowledged messages come again on the next connection,
    and what was published while the client was away waits for it."""
    s = spec(f"{topic}/#", clean_session=False, manual_ack=True)
    got: list[tuple[bytes, int]] = []
    link_of: list[Link] = []

    def direct() -> DirectCallback:
        def on_message(t: str, payload: bytes, mid: int, qos: int) -> None:
            got.append((payload, mid))
            if payload != b"hold":
                link_of[-1].ack(mid, qos)

        return on_message

    async def serve(link: Link) -> None:
        link_of.append(link)
        await until(lambda: len(got) >= 2)

    session = Session(under_test.transport, under_test.link(), s, name="t")
    first = asyncio.create_task(session.run(serve, direct=direct))
    await until(lambda: session.connected)
    await publish(under_test, f"{topic}/a", b"hold")  # never acknowledged
    await publish(under_test, f"{topic}/b", b"acked")
    async with asyncio.timeout(BOUND_S):
        await first  # serve returned: the session closed cleanly, the broker keeps it
    await publish(under_test, f"{topic}/c", b"while away")

    async def hold(link: Link) -> None:
        link_of.append(link)
        await asyncio.Event().wait()

    got.clear()
    second = asyncio.create_task(session.run(hold, direct=direct))
    await until(lambda: len(got) >= 2)
    await stopped_within_bound(second)
    assert [p for p, _ in got] == [b"hold", b"while away"]


# -- what an operator reads -------------------------------------------------------------------
async def test_an_outage_is_two_log_lines_however_many_retries(
    under_test: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="amcp.runtime.session")
    session = Session(under_test.transport, under_test.link(), spec(), name="t")
    async with running(session, Recorder()):
        await until(lambda: session.connected)
        under_test.kill()
        await until(lambda: session.losses >= 5)  # the kill and several failed retries
        under_test.start()
        await until(lambda: session.connected)
    lines = [r.getMessage() for r in caplog.records if r.name == "amcp.runtime.session"]
    assert lines == [
        "mqtt session connected",
        "connection lost; retrying until it is back",
        "mqtt session connected again",
    ]
    again = next(r for r in caplog.records if r.getMessage() == "mqtt session connected again")
    assert again.attempts >= 5  # type: ignore[attr-defined]
    assert again.outage_s >= 0  # type: ignore[attr-defined]
