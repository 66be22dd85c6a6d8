"""An MQTT broker in memory, for fast tests of the parts that run on a session.

:class:`MemoryBroker` keeps what the daemons rely on from Mosquitto: topic filters with ``+``
and ``#``, retained messages, persistent sessions (``clean_session`` false) that queue QoS 1
messages while the client is away, at most ``max_inflight`` unacknowledged messages per
client (QoS 1 with manual acknowledgement: what is unacknowledged when a connection ends is
delivered again on the next one), client-id takeover, and passwords. It can be killed and
started again, refuse logins and stop answering (as a broker under ``SIGSTOP`` does), so the
session conformance suite (``tests/amcp/runtime/test_session.py``) runs the same cases on it
and on a real Mosquitto. It is not a network server: clients reach it through
:attr:`MemoryBroker.transport`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.client import topic_matches_sub

from amcp.runtime.session import (
    DirectCallback,
    LinkLostError,
    LinkRefusedError,
    Message,
    SessionSpec,
    callback_failed,
)
from amcp.runtime.settings import BrokerLink


@dataclass
class _ClientState:
    """What the broker keeps for one client id (all of it, for a persistent session)."""

    subscriptions: dict[str, int] = field(default_factory=dict)
    queued: deque[Message] = field(default_factory=deque)
    unacked: dict[int, Message] = field(default_factory=dict)
    mids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class MemoryBroker:
    """See the module doc. ``passwords`` None accepts anyone."""

    def __init__(
        self, *, passwords: dict[str, str] | None = None, max_inflight: int = 4000
    ) -> None:
        self.passwords = passwords
        self.max_inflight = max_inflight
        self.up = True
        self._answering = asyncio.Event()
        self._answering.set()
        self._states: dict[str, _ClientState] = {}
        self._live: dict[str, _MemoryConnection] = {}
        self.retained: dict[str, Message] = {}
        self.transport = MemoryTransport(self)

    # -- what a test does to the broker ----------------------------------------------------
    def kill(self) -> None:
        """Stop at once: every connection is lost; new ones fail until :meth:`start`.
        Persistent sessions and retained messages survive (as with Mosquitto's store)."""
        self.up = False
        for conn in list(self._live.values()):
            conn.lose("broker stopped")

    def start(self) -> None:
        self.up = True

    def drop(self, client_id: str) -> None:
        """Lose one client's connection (its network went away); the broker stays up."""
        conn = self._live.get(client_id)
        if conn is not None:
            conn.lose("connection dropped")

    def pause(self) -> None:
        """Stop answering (connects, subscribes and publishes wait), like ``SIGSTOP``."""
        self._answering.clear()

    def resume(self) -> None:
        self._answering.set()

    def unacked(self, client_id: str) -> int:
        """Messages delivered to ``client_id`` and not acknowledged yet."""
        state = self._states.get(client_id)
        return 0 if state is None else len(state.unacked)

    # -- the broker's side of a connection ----------------------------------------------------
    async def _answer(self) -> None:
        await self._answering.wait()
        await asyncio.sleep(0)

    async def connect(
        self, broker: BrokerLink, spec: SessionSpec, on_message: DirectCallback | None
    ) -> _MemoryConnection:
        if not self.up:
            raise LinkLostError(f"[Errno 111] Connection refused ({broker.host}:{broker.port})")
        await self._answer()
        if not self.up:
            raise LinkLostError("broker stopped")
        if self.passwords is not None:
            expected = self.passwords.get(broker.username)
            if expected is None or expected != broker.secret():
                raise LinkRefusedError("[code:134] Bad user name or password", 134)
        old = self._live.pop(spec.client_id, None)
        if old is not None:
            old.lose("session taken over")
        if spec.clean_session or spec.client_id not in self._states:
            self._states[spec.client_id] = _ClientState()
        state = self._states[spec.client_id]
        # what the last connection left unacknowledged comes first, then what was queued
        state.queued.extendleft(reversed(list(state.unacked.values())))
        state.unacked.clear()
        conn = _MemoryConnection(self, spec, state, on_message)
        self._live[spec.client_id] = conn
        asyncio.get_running_loop().call_soon(conn.pump)
        return conn

    def route(self, message: Message) -> None:
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        for client_id, state in self._states.items():
            qos = max(
                (q for f, q in state.subscriptions.items() if topic_matches_sub(f, message.topic)),
                default=None,
            )
            if qos is None:
                continue
            conn = self._live.get(client_id)
            if conn is None and qos == 0:
                continue  # QoS 0 is not queued for an absent client
            state.queued.append(
                Message(message.topic, message.payload, min(qos, message.qos), retain=False)
            )
            if conn is not None:
                asyncio.get_running_loop().call_soon(conn.pump)

    def ended(self, conn: _MemoryConnection) -> None:
        if self._live.get(conn.spec.client_id) is conn:
            del self._live[conn.spec.client_id]
            if conn.spec.clean_session:
                self._states.pop(conn.spec.client_id, None)


class MemoryTransport:
    """:class:`amcp.runtime.session.Transport` onto a :class:`MemoryBroker`."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def connect(
        self, broker: BrokerLink, spec: SessionSpec, on_message: DirectCallback | None
    ) -> _MemoryConnection:
        return await self.broker.connect(broker, spec, on_message)


class _MemoryConnection:
    def __init__(
        self,
        broker: MemoryBroker,
        spec: SessionSpec,
        state: _ClientState,
        on_message: DirectCallback | None,
    ) -> None:
        self.broker = broker
        self.spec = spec
        self.state = state
        self.on_message = on_message
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def open(self) -> bool:
        return not self.lost.done()

    def _check(self) -> None:
        if self.lost.done():
            raise LinkLostError("disconnected")

    def lose(self, why: str) -> None:
        if not self.lost.done():
            self.lost.set_exception(LinkLostError(why))
            self.lost.exception()  # retrieved: a connection nobody waits on is fine
        self.broker.ended(self)

    def pump(self) -> None:
        """Deliver queued messages up to the in-flight limit."""
        state = self.state
        while self.open and state.queued:
            if self.spec.manual_ack and len(state.unacked) >= self.broker.max_inflight:
                return
            message = state.queued.popleft()
            mid = next(state.mids)
            delivered = Message(message.topic, message.payload, message.qos, message.retain, mid)
            if self.spec.manual_ack and message.qos > 0:
                state.unacked[mid] = delivered
            if self.on_message is not None:
                try:
                    self.on_message(delivered.topic, delivered.payload, mid, delivered.qos)
                except Exception as exc:
                    callback_failed(self.on_message, exc)
            else:
                self.inbox.put_nowait(delivered)

    # -- Link ------------------------------------------------------------------------------------
    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        self._check()
        await self._race(self.broker._answer())  # noqa: SLF001
        self.broker.route(Message(topic, bytes(payload), qos, retain))

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> None:
        self._check()
        await self._race(self.broker._answer())  # noqa: SLF001
        for f in filters:
            self.state.subscriptions[f] = qos
            for message in list(self.broker.retained.values()):
                if topic_matches_sub(f, message.topic):
                    self.state.queued.append(
                        Message(message.topic, message.payload, min(qos, message.qos), retain=True)
                    )
        self.pump()

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            self._check()
            getter = asyncio.ensure_future(self.inbox.get())
            either: set[asyncio.Future[Any]] = {getter, self.lost}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                getter.cancel()
            if getter.done() and not getter.cancelled():
                yield getter.result()
            else:
                self._check()

    def ack(self, mid: int, qos: int) -> None:  # noqa: ARG002 - the Link signature
        if self.open and self.state.unacked.pop(mid, None) is not None:
            self.pump()

    async def wait_lost(self) -> None:
        await asyncio.shield(self.lost)
        raise LinkLostError("disconnected")

    async def close(self) -> None:
        if self.open:
            self.lost.set_result(None)
        self.broker.ended(self)

    async def _race(self, step: Coroutine[Any, Any, None]) -> None:
        """Wait for the broker's answer, or fail as soon as the link is lost."""
        task = asyncio.ensure_future(step)
        either: set[asyncio.Future[Any]] = {task, self.lost}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
        self._check()
