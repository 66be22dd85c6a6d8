"""Sealing messages into envelopes and opening them again, in the order that keeps both safe.

:class:`Sealer` makes a fresh envelope at send time (a backlog drained after days offline goes
out in new envelopes; the readings inside keep their own timestamps). :class:`Opener` checks,
in this order, and records nothing until the signature verified:

    size → structure → clock window → key id lookup → source ↔ key owner → signature
    (constant time) → replay (counter window, else Bloom + exact store) → accept

Both are thread-safe. Opening costs a signature check and may touch SQLite, so async callers
run it in a worker thread (``await asyncio.to_thread(opener.open, data, topic)``).
"""

from __future__ import annotations

import itertools
import os
import time

import msgspec

from amcp.crypto.keyring import Keyring
from amcp.crypto.keys import Signer
from amcp.replay.guard import ReplayGuard, Verdict, WallClock
from amcp.wire.context import Context, new_traceparent
from amcp.wire.envelope import (
    MAX_FRAME_BYTES,
    MAX_TOPIC_BYTES,
    WIRE_VERSION,
    Header,
    decode_frame_view,
    encode_frame,
    encode_header,
    signing_input,
    signing_parts,
    topic_prefix,
)
from amcp.wire.errors import (
    BadSignatureError,
    ExpiredKeyError,
    MalformedPayloadError,
    OversizedEnvelopeError,
    ReplayedEnvelopeError,
    RevokedKeyError,
    SourceMismatchError,
    StaleEnvelopeError,
    UnknownKeyError,
)
from amcp.wire.messages import MESSAGE_DECODER, RETAINED_KINDS, Message, encode_message, kind_of

DEFAULT_WINDOW_S = 90.0
_MAX_TOPICS = 1024


class Verified(msgspec.Struct, frozen=True):
    """An authentic, fresh envelope whose payload has not been decoded yet.

    ``payload`` is a read-only view into the received frame (not copied: it is most of the
    frame); ``bytes(verified.payload)`` to keep it beyond the frame.
    """

    header: Header
    payload: bytes | memoryview
    topic: str


class Opened(msgspec.Struct, frozen=True):
    """An accepted envelope: its header (context, source, ids) and its decoded message."""

    header: Header
    message: Message
    topic: str


def _encode_topic(topic: str) -> bytes:
    raw = topic.encode()
    if len(raw) > MAX_TOPIC_BYTES:
        raise OversizedEnvelopeError("topic", len(raw), MAX_TOPIC_BYTES)
    return raw


class Sealer:
    """Seals messages from one node with its current key; one counter epoch per instance."""

    def __init__(self, signer: Signer, *, zone: str = "", clock: WallClock | None = None) -> None:
        self._signer = signer
        self._zone = zone
        self._clock = clock or time
        self.epoch = int.from_bytes(os.urandom(8), "big") >> 1
        self._counter = itertools.count(1)

    @property
    def signer(self) -> Signer:
        return self._signer

    def rekey(self, signer: Signer) -> None:
        """Switch to a rotated key (for owner changes, make a new Sealer)."""
        if signer.owner != self._signer.owner:
            raise ValueError("rekey keeps the node: new key has another owner")
        self._signer = signer

    def seal(self, message: Message, topic: str, context: Context | None = None) -> bytes:
        """Encode, stamp and sign ``message`` for publication on ``topic``."""
        signer = self._signer
        ctx = context or Context()
        header = Header(
            kind=kind_of(message),
            id=os.urandom(16).hex(),
            source=signer.owner,
            key_id=signer.key_id,
            nonce=os.urandom(16),
            ts_ms=int(self._clock.time() * 1000),
            zone=ctx.zone or self._zone,
            correlation_id=ctx.correlation_id,
            causation_id=ctx.causation_id,
            traceparent=ctx.traceparent or new_traceparent(),
            epoch=self.epoch,
            counter=next(self._counter),
        )
        hdr = encode_header(header)
        payload = encode_message(message)
        signature = signer.sign(signing_input(WIRE_VERSION, _encode_topic(topic), hdr, payload))
        return encode_frame(hdr, payload, signature)


class Opener:
    """Verifies envelopes against a keyring and a replay guard; raises only EnvelopeErrors."""

    def __init__(
        self,
        keyring: Keyring,
        replay_guard: ReplayGuard,
        clock: WallClock | None = None,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        max_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.keyring = keyring
        self.replay_guard = replay_guard
        self._clock = clock or time
        self._window_ms = int(window_s * 1000)
        self._max_bytes = max_bytes
        self._prefixes: dict[str, bytes] = {}

    def _topic_prefix(self, topic: str) -> bytes:
        """The signing-input prefix for ``topic``, cached (a link uses a handful of topics)."""
        prefix = self._prefixes.get(topic)
        if prefix is None:
            if len(self._prefixes) >= _MAX_TOPICS:
                self._prefixes = {}
            prefix = topic_prefix(WIRE_VERSION, _encode_topic(topic))
            self._prefixes = {**self._prefixes, topic: prefix}  # replaced whole: thread-safe
        return prefix

    def verify(
        self, data: bytes, topic: str, *, retained: bool = False, fresh: bool = True
    ) -> Verified:
        """Every check but payload decoding. ``retained`` skips window and replay checks for
        retained-kind messages, which the caller then judges by version (:meth:`open`).
        ``fresh=False`` checks only that the envelope is authentic (key, signature), not
        whether it is fresh: for answering an envelope refused as stale with "send it again"
        (nothing is recorded, so this never admits the envelope itself)."""
        if type(data) is not bytes:
            data = bytes(data)  # views below must not see the caller change the buffer
        frame, header = decode_frame_view(data, self._max_bytes)
        now_ms = int(self._clock.time() * 1000)
        retained = (retained and header.kind in RETAINED_KINDS) or not fresh
        if not retained and abs(header.ts_ms - now_ms) > self._window_ms:
            raise StaleEnvelopeError(header.ts_ms, now_ms, self._window_ms)
        found = self.keyring.get_parts(header.key_id)
        if found is None:
            raise UnknownKeyError(header.key_id)
        entry, check = found
        if entry.revoked_ms is not None and entry.revoked_ms <= now_ms:
            raise RevokedKeyError(entry.key_id, entry.revoked_ms)
        if entry.not_after_ms is not None and entry.not_after_ms < now_ms:
            raise ExpiredKeyError(entry.key_id, entry.not_after_ms)
        if entry.owner != header.source:
            raise SourceMismatchError(entry.key_id, entry.owner, header.source)
        signed = signing_parts(self._topic_prefix(topic), frame.header, frame.payload)
        if not check(frame.signature, signed):
            raise BadSignatureError(entry.key_id)
        if not retained:
            self._check_replay(header, now_ms)
        return Verified(header, frame.payload, topic)

    def _check_replay(self, header: Header, now_ms: int) -> None:
        verdict = self.replay_guard.check(
            header.key_id, header.ts_ms, header.nonce, header.epoch, header.counter, now_ms
        )
        if verdict is Verdict.ACCEPT:
            return
        if verdict is Verdict.BEFORE_RESTART:
            raise StaleEnvelopeError(
                header.ts_ms,
                now_ms,
                self._window_ms,
                "stamped before an unclean restart of the replay store",
            )
        why = "counter below the sliding window" if verdict is Verdict.BELOW_WINDOW else "seen"
        raise ReplayedEnvelopeError(header.key_id, why)

    def open(self, data: bytes, topic: str, *, retained: bool = False) -> Opened | None:
        """Verify, then decode the payload. Returns None only for a retained message whose
        version is not newer than one already accepted (ignore it, it is not an error)."""
        verified = self.verify(data, topic, retained=retained)
        message = decode_payload(verified.header, verified.payload)
        if retained and verified.header.kind in RETAINED_KINDS:
            version = getattr(message, "version", None)
            scope = f"{verified.header.source}\x00{verified.header.kind}"
            if not isinstance(version, int) or not self.replay_guard.admit_version(scope, version):
                return None
        return Opened(verified.header, message, topic)


def decode_payload(header: Header, payload: bytes | memoryview) -> Message:
    """The message inside an envelope; its kind must match the (signed) header's kind."""
    try:
        message = MESSAGE_DECODER.decode(payload)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise MalformedPayloadError(f"{header.kind} payload: {exc}") from None
    if kind_of(message) != header.kind:
        raise MalformedPayloadError(f"header says {header.kind!r}, payload is {kind_of(message)!r}")
    return message
