"""The aiomqtt transport of the session runner (:mod:`amcp.runtime.session`): client
construction, TLS, manual acks, a direct message callback for the ingest hot path, and the
one place where aiomqtt's errors become the project's (:func:`link_error`).

Manual acknowledgement: aiomqtt 2.5 has no public API for it, so we use the paho client
under it (``manual_ack_set`` / ``ack``, paho-mqtt >= 2.0). :func:`enable_manual_ack` checks
that API is there and fails loudly if a dependency upgrade removed it: silently falling back
to automatic PUBACK would acknowledge readings before they are on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from amcp.runtime.session import (
    CLOSE_TIMEOUT_S,
    DirectCallback,
    LinkLostError,
    LinkRefusedError,
    Message,
    SessionMetrics,
    SessionSpec,
    callback_failed,
)
from amcp.runtime.settings import BrokerLink

log = logging.getLogger(__name__)


class ManualAckUnsupportedError(RuntimeError):
    """The installed aiomqtt/paho no longer exposes the manual-ack API we rely on."""


class ReloadingTLSContext(ssl.SSLContext):
    """A client TLS context that re-reads its certificate file before each new connection.

    paho keeps one context for a client's whole life, and a renewal (docs/trust.md) replaces
    the certificate file while the daemon runs: without this the next reconnect would present
    the old certificate, and fail once it is revoked or expired. The file is re-read only when
    it changed (inode, size or mtime: renewals replace it atomically).
    """

    cert_file: str = ""
    key_file: str | None = None
    _stamp: tuple[int, int, int] | None = None

    def reload_if_changed(self) -> None:
        st = Path(self.cert_file).stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self.load_cert_chain(self.cert_file, self.key_file)
            self._stamp = stamp

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.cert_file:
            self.reload_if_changed()
        return super().wrap_socket(*args, **kwargs)


def tls_context(link: BrokerLink) -> ssl.SSLContext | None:
    """The TLS context ``link`` asks for (None for plain TCP); verifies the broker's name."""
    if not link.uses_tls:
        return None
    ctx = ReloadingTLSContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if link.ca_file:
        ctx.load_verify_locations(cafile=link.ca_file)
    else:
        ctx.load_default_certs()
    if link.cert_file:
        ctx.cert_file = link.cert_file
        ctx.key_file = link.key_file or None
        ctx.reload_if_changed()  # a missing or bad certificate fails now, not at connect
    return ctx


def make_client(
    link: BrokerLink, identifier: str, *, clean_session: bool, **kw: Any
) -> aiomqtt.Client:
    if link.uses_tls and "tls_context" not in kw:
        kw["tls_context"] = tls_context(link)
    client = aiomqtt.Client(
        link.host,
        link.port,
        username=link.username or None,
        password=link.secret(),
        identifier=identifier,
        clean_session=clean_session,
        keepalive=link.keepalive,
        **kw,
    )
    _set_nodelay(client)
    return client


def _set_nodelay(client: aiomqtt.Client) -> None:
    """Turn off Nagle's algorithm on the client's socket: paho leaves it on, and a small MQTT
    packet (a PUBACK, an ack, a short batch) written behind unacknowledged data then waits for
    the peer's delayed ACK, up to 40 ms on Linux, on every hop (measured: the gateway-to-cloud
    latency at 3,000 readings/s fell from a 48 ms median to 21 ms)."""
    paho = getattr(client, "_client", None)
    opened = getattr(paho, "on_socket_open", None)
    if paho is None or opened is None:
        raise ManualAckUnsupportedError("aiomqtt.Client._client.on_socket_open is missing")

    def on_socket_open(c: Any, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (a test double)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opened(c, userdata, sock)

    paho.on_socket_open = on_socket_open


def enable_manual_ack(client: aiomqtt.Client) -> Any:
    """Switch ``client`` to manual PUBACK; returns the paho client whose ``ack`` to call."""
    paho = getattr(client, "_client", None)
    if paho is None or not callable(getattr(paho, "manual_ack_set", None)):
        raise ManualAckUnsupportedError(
            "aiomqtt.Client._client.manual_ack_set is missing: the pinned aiomqtt/paho "
            "versions changed; readings would be acknowledged before they are stored"
        )
    if not callable(getattr(paho, "ack", None)):
        raise ManualAckUnsupportedError("paho Client.ack is missing")
    paho.manual_ack_set(True)  # noqa: FBT003 - paho's API
    return paho


def on_message_direct(client: aiomqtt.Client, callback: DirectCallback) -> None:
    """Deliver messages to ``callback`` straight from paho, bypassing aiomqtt's iterator.

    aiomqtt's ``messages`` iterator builds a Message and an asyncio task per message; on the
    ingest path that is about a third of the gateway's CPU per reading (measured with py-spy).
    paho runs on the event loop (aiomqtt drives it with ``add_reader``), so the callback runs
    there too and must not block. Like :func:`enable_manual_ack` this reaches under aiomqtt;
    it fails loudly if the internals it needs are gone.
    """
    paho = getattr(client, "_client", None)
    if paho is None or not hasattr(paho, "on_message"):
        raise ManualAckUnsupportedError("aiomqtt.Client._client (paho) is missing")

    def relay(_client: Any, _userdata: Any, message: Any) -> None:
        try:
            callback(message.topic, message.payload, message.mid, message.qos)
        except Exception as exc:
            callback_failed(callback, exc)

    paho.on_message = relay


REFUSED_CODES = frozenset({2, 4, 5, 133, 134, 135, 138, 140})
"""CONNACK codes (MQTT 3.1.1 and their MQTT 5 reason codes, which paho 2 reports) that mean
the broker refused this client: identifier rejected, bad credentials, not authorised, banned,
bad authentication method."""


def link_error(exc: aiomqtt.MqttError) -> LinkLostError:
    """The project error for an aiomqtt error: refused logins apart, every error is a lost
    link (aiomqtt reports socket, TLS and timeout failures all as MqttError)."""
    rc = getattr(exc, "rc", None)
    code = rc.value if isinstance(rc, ReasonCode) else rc
    if isinstance(exc, MqttConnectError) and code in REFUSED_CODES:
        return LinkRefusedError(str(exc), code if isinstance(code, int) else None)
    return LinkLostError(str(exc) or type(exc).__name__)


class MqttTransport:
    """The daemons' transport (:class:`amcp.runtime.session.Transport`) over aiomqtt: a
    fresh client per connection, so no library state outlives a lost link."""

    def __init__(self, *, metrics: SessionMetrics | None = None, **client_options: Any) -> None:
        self.metrics = metrics
        """Where every session on this transport reports its state (the daemon's registry)."""
        self.client_options = client_options
        """Passed to ``aiomqtt.Client`` (``max_inflight_messages``, ``timeout`` ...)."""

    async def connect(
        self, broker: BrokerLink, spec: SessionSpec, on_message: DirectCallback | None
    ) -> MqttConnection:
        client = make_client(
            broker, spec.client_id, clean_session=spec.clean_session, **self.client_options
        )
        paho = enable_manual_ack(client) if spec.manual_ack else client._client  # noqa: SLF001
        if on_message is not None:
            on_message_direct(client, on_message)
        conn = MqttConnection(client, paho)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            conn.drop()
            raise link_error(exc) from exc
        except BaseException:
            conn.drop()  # a stop request mid-connect: nothing may stay open
            raise
        return conn


class MqttConnection:
    def __init__(self, client: aiomqtt.Client, paho: Any) -> None:
        self.client = client
        self._paho = paho
        self.acked = 0
        """PUBACKs received (of :meth:`publish` and :meth:`publish_nowait` alike)."""
        self.acked_changed = asyncio.Event()
        self._waiting: dict[int, asyncio.Future[None]] = {}
        """mid → the :meth:`publish` call waiting for its PUBACK."""

        def on_publish(_client: Any, _userdata: Any, mid: int, *_rest: Any) -> None:
            self.acked += 1
            self.acked_changed.set()
            waiter = self._waiting.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        paho.on_publish = on_publish

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Hand a publish to paho without a future or task of its own (a load generator's
        path: at 90 us a message aiomqtt's publish would be the bottleneck it measures);
        count its PUBACK in :attr:`acked`. Raises :class:`LinkLostError` if paho refuses."""
        info = self._paho.publish(topic, payload, qos=qos)
        if info.rc != 0:
            raise LinkLostError(f"publish refused by the client (paho rc {info.rc})")

    @property
    def lost(self) -> bool:
        future = getattr(self.client, "_disconnected", None)
        return isinstance(future, asyncio.Future) and future.done()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish on paho directly and wait for the PUBACK or the loss of the link, whichever
        comes first (aiomqtt's publish would wait its whole timeout on a dead link, and
        costs a task and a timer per message)."""
        lost = self._lost_future()
        if lost.done():
            raise LinkLostError("disconnected")
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != 0:
            raise LinkLostError(f"publish refused by the client (paho rc {info.rc})")
        if qos == 0 or info.is_published():  # a PUBACK can come before publish() returns
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[info.mid] = waiter
        either: set[asyncio.Future[Any]] = {waiter, lost}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiting.pop(info.mid, None)
        if not waiter.done():
            raise LinkLostError("disconnected before the broker acknowledged a publish")

    def _lost_future(self) -> asyncio.Future[None]:
        future = getattr(self.client, "_disconnected", None)
        if not isinstance(future, asyncio.Future):
            raise ManualAckUnsupportedError("aiomqtt.Client._disconnected is missing")
        return future

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> None:
        await self._until_lost(self.client.subscribe([(f, qos) for f in filters]))

    async def _until_lost(self, step: Coroutine[Any, Any, object]) -> None:
        """Run ``step``, failing as soon as the link is lost: paho queues a publish on a
        dead connection and aiomqtt would wait its whole timeout for the PUBACK."""
        task = asyncio.ensure_future(step)
        lost = asyncio.ensure_future(self.wait_lost())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if not task.done() or task.cancelled():
            await asyncio.wait({lost})
            raise LinkLostError("disconnected")
        try:
            task.result()
        except aiomqtt.MqttError as exc:
            raise link_error(exc) from exc

    async def messages(self) -> AsyncIterator[Message]:
        try:
            async for m in self.client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else b""
                yield Message(m.topic.value, payload, m.qos, bool(m.retain), m.mid)
        except aiomqtt.MqttError as exc:
            raise link_error(exc) from exc

    def ack(self, mid: int, qos: int) -> None:
        self._paho.ack(mid, qos)

    async def wait_lost(self) -> None:
        future = self._lost_future()
        try:
            await asyncio.shield(future)
        except aiomqtt.MqttError as exc:
            raise link_error(exc) from exc
        raise LinkLostError("disconnected")

    async def close(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, TimeoutError):
            pass
        finally:
            self.drop()

    def drop(self) -> None:
        """Close the socket and release aiomqtt's state without a handshake (after a
        cancelled connect or a disconnect that did not finish)."""
        client: Any = self.client
        with contextlib.suppress(Exception):
            if self._paho.socket() is not None:
                self._paho._sock_close()  # noqa: SLF001 - paho has no public abort
        disconnected = getattr(client, "_disconnected", None)
        if isinstance(disconnected, asyncio.Future):
            if not disconnected.done():
                disconnected.set_result(None)
            elif not disconnected.cancelled():
                disconnected.exception()  # retrieved: asyncio would log it as unhandled
        lock = getattr(client, "_lock", None)
        if isinstance(lock, asyncio.Lock) and lock.locked():
            lock.release()
