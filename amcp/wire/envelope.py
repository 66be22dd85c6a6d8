"""The envelope's bytes: frame, header, and the canonical bytes a signature covers.

A frame is a msgpack array ``[version, header, payload, signature]`` where ``header`` and
``payload`` are msgpack *bin* values holding their own msgpack encodings. The signature covers
those exact bytes (never a re-encoding), so a verifier needs no canonical msgpack, header fields
added by newer peers are still covered, and a client in another language only has to join byte
strings (the same idea as COSE_Sign1's Sig_structure; docs/wire.md has the byte layout)::

    signing_input = b"amcp-envelope\\x00" || u8 version || u32be len(topic) || topic
                    || u32be len(header) || header || payload
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from amcp.wire.errors import MalformedEnvelopeError, OversizedEnvelopeError, UnsupportedVersionError

WIRE_VERSION = 1
"""Major wire version: bumped only for changes older peers cannot read (docs/wire.md)."""

MAX_FRAME_BYTES = 1 << 20
"""Default size limit for a whole frame, checked before any decoding."""
MAX_HEADER_BYTES = 4096
MAX_TOPIC_BYTES = 65535
"""MQTT's own topic limit."""

_PREFIX = b"amcp-envelope\x00"


class Frame(msgspec.Struct, array_like=True, frozen=True):
    version: int
    header: bytes
    payload: bytes
    signature: bytes


class FrameView(msgspec.Struct, array_like=True, frozen=True):
    """:class:`Frame` decoded without copying: the byte fields are views into the input, so
    a verifier hashes the payload where it arrived (it is most of the frame)."""

    version: int
    header: memoryview
    payload: memoryview
    signature: memoryview


class Header(msgspec.Struct, frozen=True, omit_defaults=True):
    """Everything the signature covers besides payload and topic.

    ``counter``/``epoch`` are the sender's monotonic counter and the random id of the counter's
    lifetime (one per sealer start); senders without counters omit both and are checked by
    nonce. Unknown header fields from newer peers are ignored (and still signed).
    """

    kind: str
    id: str
    source: str
    key_id: str
    nonce: bytes
    ts_ms: int
    zone: str = ""
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    epoch: int | None = None
    counter: int | None = None


_B = TypeVar("_B", bytes, memoryview)
Buffer = bytes | memoryview
_F = TypeVar("_F", Frame, FrameView)

_FRAME_ENCODER = msgspec.msgpack.Encoder()
_FRAME_DECODER = msgspec.msgpack.Decoder(Frame)
_VIEW_DECODER = msgspec.msgpack.Decoder(FrameView)
_HEADER_DECODER = msgspec.msgpack.Decoder(Header)


def signing_input(version: int, topic: bytes, header: bytes, payload: bytes) -> bytes:
    """The canonical bytes a signature covers: every field but the signature, and the topic."""
    return b"".join(signing_parts(topic_prefix(version, topic), header, payload))


def topic_prefix(version: int, topic: bytes) -> bytes:
    """The start of :func:`signing_input`, fixed per (version, topic): verifiers cache it."""
    return b"".join((_PREFIX, version.to_bytes(1, "big"), len(topic).to_bytes(4, "big"), topic))


def signing_parts(prefix: bytes, header: Buffer, payload: _B) -> tuple[bytes, _B]:
    """:func:`signing_input` as two parts whose concatenation it is: a small head (prefix and
    header) and the payload, hashed where it lies instead of joined into a copy."""
    return b"".join((prefix, len(header).to_bytes(4, "big"), header)), payload


def encode_header(header: Header) -> bytes:
    return _FRAME_ENCODER.encode(header)


def encode_frame(header: bytes, payload: bytes, signature: bytes) -> bytes:
    return _FRAME_ENCODER.encode(Frame(WIRE_VERSION, header, payload, signature))


def decode_frame(data: bytes, max_bytes: int = MAX_FRAME_BYTES) -> tuple[Frame, Header]:
    """Size, then structure: raises only :class:`MalformedEnvelopeError` and its subclasses."""
    return _decode(_FRAME_DECODER, data, max_bytes)


def decode_frame_view(data: bytes, max_bytes: int = MAX_FRAME_BYTES) -> tuple[FrameView, Header]:
    """:func:`decode_frame` without copying the byte fields (views into ``data``)."""
    return _decode(_VIEW_DECODER, data, max_bytes)


def _decode(decoder: msgspec.msgpack.Decoder[_F], data: bytes, max_bytes: int) -> tuple[_F, Header]:
    if len(data) > max_bytes:
        raise OversizedEnvelopeError("frame", len(data), max_bytes)
    try:
        frame = decoder.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise MalformedEnvelopeError(f"not an aMCP frame: {exc}") from None
    if frame.version != WIRE_VERSION:
        raise UnsupportedVersionError(frame.version)
    if len(frame.header) > MAX_HEADER_BYTES:
        raise OversizedEnvelopeError("header", len(frame.header), MAX_HEADER_BYTES)
    try:
        header = _HEADER_DECODER.decode(frame.header)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise MalformedEnvelopeError(f"bad envelope header: {exc}") from None
    return frame, header
