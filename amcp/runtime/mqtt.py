"""MQTT connection helpers over aiomqtt: client construction, reconnect backoff, manual acks,
and a direct message callback for the ingest hot path.

Manual acknowledgement: aiomqtt 2.5 has no public API for it, so we use the paho client
under it (``manual_ack_set`` / ``ack``, paho-mqtt >= 2.0). :func:`enable_manual_ack` checks
that API is there and fails loudly if a dependency upgrade removed it: silently falling back
to automatic PUBACK would acknowledge readings before they are on disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

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


MessageCallback = Callable[[str, bytes, int, int], None]
"""(topic, payload, mid, qos), called on the event loop thread for every message."""


def on_message_direct(client: aiomqtt.Client, callback: MessageCallback) -> None:
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


async def wait_disconnected(client: aiomqtt.Client) -> None:
    """Return never; raise :class:`aiomqtt.MqttError` once the connection is lost."""
    future = getattr(client, "_disconnected", None)
    if not isinstance(future, asyncio.Future):
        raise ManualAckUnsupportedError("aiomqtt.Client._disconnected is missing")
    await asyncio.shield(future)
    raise aiomqtt.MqttError("disconnected")


def connection_lost(exc: BaseException) -> aiomqtt.MqttError | None:
    """The MqttError behind ``exc`` when losing the connection is all that happened.

    A session run in a TaskGroup reports a lost connection as an ExceptionGroup holding one
    or more MqttErrors; anything else in the group is a real failure and is not swallowed.
    """
    if isinstance(exc, aiomqtt.MqttError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(aiomqtt.MqttError)
        if matched is not None and rest is None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf if isinstance(leaf, aiomqtt.MqttError) else None
    return None


async def pause_after_loss(caught: BaseException, backoff: Backoff, what: str) -> None:
    """The one reconnect step every MQTT session loop shares: re-raise ``caught`` unless it
    is a lost connection (:func:`connection_lost`), else log it once and sleep the backoff."""
    exc = connection_lost(caught)
    if exc is None:
        raise caught
    delay = backoff.next_delay()
    log.warning(
        "connection lost",
        extra={"link": what, "error": str(exc), "retry_in_s": round(delay, 2)},
    )
    await asyncio.sleep(delay)


class Backoff:
    """Exponential reconnect delay with full jitter, reset after a good connection."""

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
