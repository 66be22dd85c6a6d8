"""Context carried by every envelope: causality, trace and zone, and how it flows (fusion).

A message produced while handling another one is sealed with ``derive(parent)``: it keeps the
parent's correlation id (the conversation), names the parent as its cause (the causality chain),
continues the parent's W3C trace as a child span, and stays in the parent's zone.
"""

from __future__ import annotations

import os
import re

import msgspec

from amcp.wire.envelope import Header

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class Context(msgspec.Struct, frozen=True):
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    zone: str = ""


def new_traceparent(sampled: bool = True) -> str:
    """A fresh W3C trace context (version 00, random trace and span ids)."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{'01' if sampled else '00'}"


def child_traceparent(traceparent: str | None) -> str:
    """Same trace, new span; an absent or invalid parent starts a new trace (per W3C)."""
    m = _TRACEPARENT.match(traceparent or "")
    if m is None or m[1] == "ff" or m[2] == _ZERO_TRACE or m[3] == _ZERO_SPAN:
        return new_traceparent()
    return f"00-{m[2]}-{os.urandom(8).hex()}-{m[4]}"


def trace_id(traceparent: str | None) -> str | None:
    m = _TRACEPARENT.match(traceparent or "")
    return m[2] if m else None


def derive(parent: Header, *, zone: str | None = None) -> Context:
    """The context for a message produced while handling ``parent`` (context fusion)."""
    return Context(
        correlation_id=parent.correlation_id or parent.id,
        causation_id=parent.id,
        traceparent=child_traceparent(parent.traceparent),
        zone=parent.zone if zone is None else zone,
    )
