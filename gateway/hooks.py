"""The gateway's extension points, declared in one place (docs/architecture.md, "Hooks").

Parts of the gateway, and later plugins, the field-device bridge and audit, hang on these:

- :class:`IngestFilter` runs **before** the outbox commit, on the decoded readings of one
  ingest batch, and returns those to store (fewer, or transformed): the S2 rate gate and the
  WASM policy. A filter that raises is run again reading by reading, so only the readings it
  fails on are refused (dead-lettered as ``unprocessable``).
- :class:`IngestObserver` runs **after** the commit, on exactly the readings that were stored
  (never on one the outbox refused or dropped), once per reading: a reading the broker
  redelivers after a gateway crash, already committed before it, is recognised and not
  observed again. GoldRush rules and the twin reporter are observers. An observer that
  raises is logged and counted; the readings are stored already and stay stored.
- :data:`EventSink` is the shape of ``Outbox.append_events``. Gateway events (S2, rules,
  policy flags) reach it through one writer, :class:`gateway.events.EventWriter`, with one
  retry rule (kept until the outbox takes them); producers hand it records with ``submit``.

Filters and observers run on the event loop and must be fast (they see every reading).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from amcp.wire.telemetry import EventRecord, Reading


class IngestFilter(Protocol):
    """Before the commit: the readings to store."""

    def __call__(self, readings: list[Reading]) -> list[Reading]: ...


class IngestObserver(Protocol):
    """After the commit: readings that were stored, each once. The return value is ignored."""

    def __call__(self, readings: list[Reading]) -> object: ...


EventSink = Callable[[Sequence[EventRecord]], Awaitable[int]]
"""Gateway events into the outbox (``Outbox.append_events``); returns how many were kept."""
