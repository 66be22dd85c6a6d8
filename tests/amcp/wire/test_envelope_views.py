"""The Opener verifies views into the received frame: mutable buffers are copied first."""

from __future__ import annotations

import pytest

from amcp.wire import BadSignatureError, decode_payload
from tests.amcp.wire.envelope_support import Link, batch


def test_mutable_buffer_cannot_change_a_verified_payload(link: Link) -> None:
    sent = batch(5)
    data = bytearray(link.hmac_sealer.seal(sent, "up"))
    # callers may hand over any buffer (a reused receive buffer, say)
    verified = link.opener.verify(data, "up")  # type: ignore[arg-type]
    data[-40:] = bytes(40)  # the receive buffer is reused for the next message
    assert decode_payload(verified.header, verified.payload) == sent


def test_topic_prefix_cache_keeps_topics_apart(link: Link) -> None:
    assert link.opener.open(link.hmac_sealer.seal(batch(), "up/a"), "up/a") is not None
    assert link.opener.open(link.hmac_sealer.seal(batch(), "up/b"), "up/b") is not None
    with pytest.raises(BadSignatureError):
        link.opener.open(link.hmac_sealer.seal(batch(), "up/a"), "up/b")
