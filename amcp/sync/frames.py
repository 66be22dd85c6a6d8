"""The frames of the LWW sync protocol, carried inside :class:`~amcp.wire.messages.SyncFrame`.

Three kinds, msgspec array-like tagged Structs (no field names on the wire, so a one-row delta
stays small). Schema evolution as elsewhere: new fields go at the end with defaults, an
existing field never changes type, a tag is never reused.

- :class:`Hello`: "this is my database, this is how far I committed yours". It starts a
  stream (or resumes one) and is the whole of the handshake: the receiver resumes sending
  from ``received`` when ``peer_database_id`` names its current database, else from zero.
- :class:`Delta`: the sender's changes in ``(base, version]`` the receiver needs, at most
  ``batch_bytes`` before compression. A delta applies on its own: whenever ``base`` is at
  most what the receiver committed, merging it leaves the receiver holding everything up to
  ``version`` (older versions of overwritten rows are never needed: LWW).
- :class:`Ack`: sent after the receiver *committed* a delta; names the database it acks.

Every frame travels in an aMCP envelope (:mod:`amcp.link`); this module only encodes.
"""

from __future__ import annotations

import zlib

import msgspec

from amcp.store.rows import ChangeSet, decode_changes

STREAM = "lww"
"""``SyncFrame.stream`` for these frames (other streams, e.g. Yjs documents, use others)."""

CODEC_RAW = 0
CODEC_ZLIB = 1
MAX_CHANGES_BYTES = 1 << 20
"""A delta never inflates past this, whatever the sender claims (zip-bomb guard)."""


class FrameError(ValueError):
    """A sync frame that cannot be decoded; ``reason`` says what was wrong."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed sync frame: {reason}")


class Hello(msgspec.Struct, array_like=True, frozen=True, tag="h"):
    database_id: str
    """The sender's database (random per SQLite file: a new id means it was wiped)."""
    peer_database_id: str
    """The recipient's database as the sender knows it ("" when it knows none)."""
    received: int
    """The highest of the recipient's versions the sender committed (for that database)."""
    reply: bool = False
    """Answer with your own hello (the initiator of a handshake sets it)."""
    fresh: bool = False
    """The sender holds no stream state for the recipient: restart your stream from
    ``received`` (set after a (re)connect and when a gap was seen)."""


class Delta(msgspec.Struct, array_like=True, frozen=True, tag="d"):
    database_id: str
    """The sender's database: versions below mean nothing in any other."""
    base: int
    version: int
    changes: bytes
    """:func:`~amcp.store.rows.encode_changes` of a ChangeSet, compressed per ``codec``."""
    codec: int = CODEC_RAW


class Ack(msgspec.Struct, array_like=True, frozen=True, tag="a"):
    database_id: str
    """The database whose versions are acknowledged (the recipient's)."""
    version: int


Frame = Hello | Delta | Ack

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode_frame(data: bytes) -> Frame:
    """Decode one frame; raises :class:`FrameError` (nothing else) on bad input."""
    try:
        frame = _decoder.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise FrameError(str(exc)) from None
    if isinstance(frame, Delta) and (frame.base < 0 or frame.version < frame.base):
        raise FrameError(f"delta range ({frame.base}, {frame.version}] is empty or negative")
    return frame


def compress(raw: bytes, *, above: int) -> tuple[bytes, int]:
    """``raw`` (an encoded change set) zlib-compressed when over ``above`` and it pays off."""
    if len(raw) > above:
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):
            return packed, CODEC_ZLIB
    return raw, CODEC_RAW


def unpack_changes(delta: Delta) -> ChangeSet:
    """The change set inside a delta; raises :class:`FrameError` on anything malformed."""
    data = delta.changes
    if delta.codec == CODEC_ZLIB:
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(data, MAX_CHANGES_BYTES)
        except zlib.error as exc:
            raise FrameError(f"bad zlib data: {exc}") from None
        if inflater.unconsumed_tail:
            raise FrameError(f"delta inflates past {MAX_CHANGES_BYTES} bytes")
    elif delta.codec != CODEC_RAW:
        raise FrameError(f"unknown codec {delta.codec}")
    elif len(data) > MAX_CHANGES_BYTES:
        raise FrameError(f"delta of {len(data)} bytes is over {MAX_CHANGES_BYTES}")
    try:
        return decode_changes(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise FrameError(f"bad change set: {exc}") from None
