"""Context fusion: a message produced while handling another carries its causality forward."""

from __future__ import annotations

from amcp.wire import Command, Event, derive
from amcp.wire.context import Context, child_traceparent, trace_id
from tests.amcp.wire.envelope_support import Link


def test_derive_carries_correlation_causation_trace_and_zone(link: Link) -> None:
    cmd = link.opener.open(
        link.sealer.seal(Command(command_id="c", target="v", action="open"), "down"), "down"
    )
    assert cmd is not None
    root = cmd.header
    assert root.correlation_id is None
    reply = link.opener.open(
        link.sealer.seal(Event(name="valve.opened", ts_ms=1), "up", derive(root)), "up"
    )
    assert reply is not None
    h = reply.header
    assert h.correlation_id == root.id  # the conversation starts at the root
    assert h.causation_id == root.id
    assert trace_id(h.traceparent) == trace_id(root.traceparent)
    assert h.traceparent != root.traceparent  # a new span in the same trace
    assert h.zone == root.zone == "z1"
    grandchild = derive(h)
    assert grandchild.correlation_id == root.id
    assert grandchild.causation_id == h.id


def test_invalid_traceparent_starts_a_new_trace() -> None:
    for bad in (
        None,
        "",
        "junk",
        "ff-" + "1" * 32 + "-" + "2" * 16 + "-01",
        "00-" + "0" * 32 + "-" + "2" * 16 + "-01",
    ):
        assert trace_id(child_traceparent(bad)) is not None


def test_explicit_context_zone_overrides_sealer_zone(link: Link) -> None:
    ctx = Context(zone="z9", correlation_id="corr")
    opened = link.opener.open(link.sealer.seal(Event(name="e", ts_ms=1), "up", ctx), "up")
    assert opened is not None
    assert opened.header.zone == "z9"
    assert opened.header.correlation_id == "corr"
