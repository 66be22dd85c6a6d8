"""MQTT connection helpers over aiomqtt: client construction, reconnect backoff, manual acks.

Manual acknowledgement: aiomqtt 2.5 has no public API for it, so we use the paho client
under it (``manual_ack_set`` / ``ack``, paho-mqtt >= 2.0). :func:`enable_manual_ack` checks
that API is there and fails loudly if a dependency upgrade removed it: silently falling back
to automatic PUBACK would acknowledge readings before they are on disk.
"""

from __future__ import annotations

import random
from typing import Any

import aiomqtt

from amcp.runtime.settings import BrokerLink


class ManualAckUnsupportedError(RuntimeError):
    """The installed aiomqtt/paho no longer exposes the manual-ack API we rely on."""


def make_client(
    link: BrokerLink, identifier: str, *, clean_session: bool, **kw: Any
) -> aiomqtt.Client:
    return aiomqtt.Client(
        link.host,
        link.port,
        username=link.username or None,
        password=link.secret(),
        identifier=identifier,
        clean_session=clean_session,
        keepalive=link.keepalive,
        **kw,
    )


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
