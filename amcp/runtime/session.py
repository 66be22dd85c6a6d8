"""The one MQTT session runner: every MQTT loop in both tiers runs on :class:`Session`.

A session connects, subscribes, runs its handler on the live :class:`Link` and, when the link
is lost, stops the handler, backs off and connects again. A transport (:class:`Transport`)
turns every library error into one of two project errors at its boundary, and the runner
is the one place that acts on them:

- :class:`LinkLostError`: the connection went away or could not be made. Reconnect with
  exponential backoff (full jitter), reset after a good connection.
- :class:`LinkRefusedError` (a kind of lost link): the broker answered and refused the login
  (bad credentials, not authorised, client id rejected). Retried at the longest delay, since
  retrying faster cannot help, and logged as an error.

Any other exception from the handler is a real failure and propagates to the supervisor. A
stop request (cancellation) always stops the session, wherever it arrives: while connecting,
subscribing, serving or backing off. The runner waits on tasks with ``asyncio.wait``, never on
a library's ``wait_for`` or a TaskGroup, so a stop request cannot be lost or turned into a
child's error (Python 3.11 does both); a library call that swallows it is cancelled again.

Two transports pass the same conformance suite (``tests/amcp/runtime/test_session.py``): the
aiomqtt one (:mod:`amcp.runtime.mqtt`), used by the daemons, and an in-memory broker
(:mod:`amcp.runtime.membroker`) for fast unit tests of ingest, uplink and sync.
See docs/architecture.md, "MQTT sessions".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import stop_task

log = logging.getLogger(__name__)
T = TypeVar("T")

STOP_GRACE_S = 2.0
"""How long a step (connect, subscribe, the handler) gets to end after a stop request, per
attempt (:func:`~amcp.runtime.supervisor.stop_task` asks three times)."""
CLOSE_TIMEOUT_S = 2.0
"""How long a clean disconnect may take before the connection is dropped."""


class LinkLostError(ConnectionError):
    """The broker connection is down (lost, or could not be made); the session reconnects."""


class LinkRefusedError(LinkLostError):
    """The broker refused the connection (bad credentials, not authorised, bad client id)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Message:
    """One received message."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    mid: int = 0


DirectCallback = Callable[[str, bytes, int, int], None]
"""(topic, payload, mid, qos): called on the event loop for every message, instead of the
:meth:`Link.messages` iterator (the ingest hot path). It must not block."""


CALLBACK_ERRORS: collections.Counter[str] = collections.Counter()
"""Exceptions that reached a paho callback, by kind (``callback:ExceptionType``)."""


def callback_failed(callback: Callable[..., object], exc: BaseException) -> None:
    """The one guard for code paho calls: an exception escaping a paho callback makes paho
    raise it from its network loop on the same packet again and again (a busy loop, nothing
    else received). It is counted, logged once per kind with its traceback, and dropped."""
    kind = f"{getattr(callback, '__qualname__', 'callback')}:{type(exc).__name__}"
    CALLBACK_ERRORS[kind] += 1
    if CALLBACK_ERRORS[kind] == 1:
        log.error("MQTT message callback failed (logged once per kind)", exc_info=exc)


@dataclass(frozen=True)
class SessionSpec:
    """What a session asks of the broker."""

    client_id: str
    subscriptions: tuple[str, ...] = ()
    clean_session: bool = True
    manual_ack: bool = False
    """QoS 1 messages are acknowledged by :meth:`Link.ack`, not on receipt."""
    qos: int = 1


class Link(Protocol):
    """A live broker connection, as a handler sees it. Every method raises
    :class:`LinkLostError` (never a library's error) once the connection is gone."""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None: ...

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> None: ...

    def messages(self) -> AsyncIterator[Message]:
        """Received messages, in order; ends by raising :class:`LinkLostError`."""
        ...

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a message (``manual_ack`` sessions); a no-op once disconnected."""
        ...


class Connection(Link, Protocol):
    """A link as the runner holds it."""

    async def wait_lost(self) -> None:
        """Never returns: raises :class:`LinkLostError` once the connection is lost."""
        ...

    async def close(self) -> None:
        """Disconnect (cleanly if the broker answers within a bound); never raises."""
        ...


class Transport(Protocol):
    async def connect(
        self, broker: BrokerLink, spec: SessionSpec, on_message: DirectCallback | None
    ) -> Connection:
        """A connected link, or :class:`LinkLostError`. A cancelled connect leaves nothing
        open. With ``on_message`` set, messages go there instead of ``messages()``."""
        ...


class Backoff:
    """Exponential delay with full jitter, reset after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        cap = min(self.maximum, self.initial * 2.0 ** (self.attempt - 1))
        return random.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0


class SessionMetrics:
    """The sessions of one daemon, on its registry: connected state, connects, losses."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "cybernetic_mqtt_connected",
            "1 while the named MQTT session is connected and subscribed",
            ["session"],
            registry=registry,
        )
        self.connects = Counter(
            "cybernetic_mqtt_connects",
            "Connections made, by session",
            ["session"],
            registry=registry,
        )
        self.losses = Counter(
            "cybernetic_mqtt_link_losses",
            "Connections lost or refused, by session and kind (lost, refused)",
            ["session", "kind"],
            registry=registry,
        )


Handler = Callable[[Link], Awaitable[None]]


def only_link_errors(exc: BaseException) -> bool:
    """True when ``exc`` says nothing but that the link went away (a lone
    :class:`LinkLostError`, or a TaskGroup's group of them)."""
    if isinstance(exc, LinkLostError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(LinkLostError)
        return rest is None
    return False


class Session:
    """One MQTT session, connected for as long as :meth:`run` runs (see the module doc)."""

    def __init__(
        self,
        transport: Transport,
        broker: BrokerLink,
        spec: SessionSpec,
        *,
        name: str,
        metrics: SessionMetrics | None = None,
    ) -> None:
        self.transport = transport
        self.broker = broker
        self.spec = spec
        self.name = name
        self.metrics = metrics if metrics is not None else getattr(transport, "metrics", None)
        """Given, or the transport's (a daemon makes one transport with its registry's)."""
        self.backoff = Backoff(broker.reconnect_initial, broker.reconnect_max)
        self.link: Link | None = None
        """The live link while connected and subscribed, else None."""
        self.connects = 0
        self.losses = 0
        self.last_error = ""
        self.refused = False
        """The last attempt was refused by the broker (credentials, authorisation)."""
        self._outage: tuple[float, int] | None = None
        """(since, failed attempts) while the link is down: one log line when an outage
        starts and one when it ends, not one per retry."""

    @property
    def connected(self) -> bool:
        return self.link is not None

    def is_connected(self) -> bool:
        """:attr:`connected` as a callable (for a metrics gauge)."""
        return self.link is not None

    async def run(
        self,
        serve: Handler,
        *,
        on_connected: Callable[[], None] | None = None,
        direct: Callable[[], DirectCallback] | None = None,
    ) -> None:
        """Serve every connection until ``serve`` returns (then return) or raises something
        other than a lost link (then raise it). ``on_connected`` is called once subscribed,
        every time; ``direct()``, when given, makes the message callback of each connection
        before it is made (a persistent session's queued messages arrive before subscribe)."""
        while True:
            try:
                await self._connection(serve, on_connected, direct)
            except LinkLostError as exc:
                await self._after_loss(exc)
            else:
                return

    async def _connection(
        self,
        serve: Handler,
        on_connected: Callable[[], None] | None,
        direct: Callable[[], DirectCallback] | None,
    ) -> None:
        callback = direct() if direct is not None else None
        conn = await settle(
            self.transport.connect(self.broker, self.spec, callback), abandon=_close
        )
        try:
            if self.spec.subscriptions:
                await settle(conn.subscribe(self.spec.subscriptions, self.spec.qos))
            self.link = conn
            self.connects += 1
            self.backoff.reset()
            if self.metrics is not None:
                self.metrics.connects.labels(self.name).inc()
                self.metrics.connected.labels(self.name).set(1)
            self._log_connected()
            if on_connected is not None:
                on_connected()
            await self._serve(conn, serve)
        finally:
            self.link = None
            if self.metrics is not None:
                self.metrics.connected.labels(self.name).set(0)
            await asyncio.shield(_close(conn))

    async def _serve(self, conn: Connection, serve: Handler) -> None:
        handler = asyncio.ensure_future(serve(conn))
        lost = asyncio.ensure_future(conn.wait_lost())
        try:
            await asyncio.wait({handler, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # runs on a stop request too: the handler ends before the link is closed
            lost.cancel()
            await stop_task(handler, STOP_GRACE_S)
            await asyncio.wait({lost})
        if lost.done() and not lost.cancelled() and lost.exception() is not None:
            if handler.done() and not handler.cancelled():
                _failure_after_loss(self.name, handler.exception())
            raise LinkLostError(str(lost.exception())) from lost.exception()
        if handler.cancelled():  # the handler stopped itself: treat it as the session's end
            return
        exc = handler.exception()
        if exc is None:
            return
        if only_link_errors(exc):
            raise LinkLostError(str(exc)) from exc
        raise exc

    def _log_connected(self) -> None:
        if self._outage is None:
            log.info("mqtt session connected", extra={"session": self.name})
            return
        since, attempts = self._outage
        self._outage = None
        log.warning(
            "mqtt session connected again",
            extra={
                "session": self.name,
                "outage_s": round(time.monotonic() - since, 1),
                "attempts": attempts,
            },
        )

    async def _after_loss(self, exc: LinkLostError) -> None:
        self.losses += 1
        self.last_error = str(exc)
        refused = isinstance(exc, LinkRefusedError)
        if self.metrics is not None:
            self.metrics.losses.labels(self.name, "refused" if refused else "lost").inc()
        delay = self.backoff.maximum if refused else self.backoff.next_delay()
        first = self._outage is None
        if first:
            self._outage = (time.monotonic(), 0)
        since, attempts = self._outage or (time.monotonic(), 0)
        self._outage = (since, attempts + 1)
        extra = {"session": self.name, "error": str(exc), "retry_in_s": round(delay, 2)}
        if refused and not self.refused:
            log.error("broker refused the connection; retrying", extra=extra)
        elif first:
            what = "connection lost" if self.connects else "cannot connect"
            log.warning(f"{what}; retrying until it is back", extra=extra)  # noqa: G004
        else:
            log.debug("still not connected", extra=extra)
        self.refused = refused
        await asyncio.sleep(delay)


def _failure_after_loss(name: str, exc: BaseException | None) -> None:
    if exc is not None and not only_link_errors(exc):
        log.error(
            "session handler failed as its link was lost", exc_info=exc, extra={"session": name}
        )


async def _close(conn: Connection) -> None:
    await conn.close()


async def settle(step: Awaitable[T], *, abandon: Callable[[T], Awaitable[None]] | None = None) -> T:
    """Await ``step`` so that a stop request always stops the caller: the step runs as a task
    the caller waits on with ``asyncio.wait``; on a stop request it is cancelled (again, if a
    library swallowed the first) and, if it still completed, ``abandon`` undoes its result."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        await stop_task(task, STOP_GRACE_S)
        completed = task.done() and not task.cancelled() and task.exception() is None
        if completed and abandon is not None:
            await abandon(task.result())
        raise
    return task.result()


@contextlib.asynccontextmanager
async def connect_once(
    transport: Transport, broker: BrokerLink, spec: SessionSpec
) -> AsyncIterator[Link]:
    """One connection without reconnecting, for short-lived clients (an enrolment request,
    a takeover that closes another session): yields the link, closes it after."""
    conn = await settle(transport.connect(broker, spec, None), abandon=_close)
    try:
        if spec.subscriptions:
            await settle(conn.subscribe(spec.subscriptions, spec.qos))
        yield conn
    finally:
        await asyncio.shield(_close(conn))
