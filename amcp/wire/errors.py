"""Why an envelope was refused: one typed error per reason, so callers count and log them apart.

Every error :class:`amcp.wire.Opener` raises is an :class:`EnvelopeError`; nothing else escapes
it (decoder fuzzing holds this). The checks run in this order, and the first failure wins::

    EnvelopeError                    base: the envelope was not accepted
    ├── MalformedEnvelopeError       not an aMCP frame: bad msgpack, wrong shape or types
    │   ├── OversizedEnvelopeError   frame, header or topic over its limit (before decoding)
    │   ├── UnsupportedVersionError  a frame version this build does not speak
    │   └── MalformedPayloadError    authentic, but the payload is no known message kind
    ├── StaleEnvelopeError           timestamp outside the clock window (or before an
    │                                unclean restart of the replay store)
    ├── KeyRejectedError             the key id does not authorise this envelope
    │   ├── UnknownKeyError          no key with this id in the keyring
    │   ├── RevokedKeyError          the key was revoked
    │   ├── ExpiredKeyError          the key's rotation overlap has ended
    │   └── SourceMismatchError      the key belongs to another node than the header's source
    ├── BadSignatureError            signature does not match the header, payload and topic
    └── ReplayedEnvelopeError        an authentic envelope this receiver already accepted

Nothing is recorded for an envelope that fails before the replay check: replay state only ever
holds envelopes whose signature verified.
"""

from __future__ import annotations


class EnvelopeError(Exception):
    """Base of every refusal; ``reason`` is a short stable label for metrics."""

    reason = "rejected"


class MalformedEnvelopeError(EnvelopeError):
    reason = "malformed"


class OversizedEnvelopeError(MalformedEnvelopeError):
    reason = "oversized"

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, limit {limit}")
        self.what = what
        self.size = size
        self.limit = limit


class UnsupportedVersionError(MalformedEnvelopeError):
    reason = "unsupported_version"

    def __init__(self, version: int) -> None:
        super().__init__(f"wire version {version} is not supported")
        self.version = version


class MalformedPayloadError(MalformedEnvelopeError):
    reason = "malformed_payload"


class StaleEnvelopeError(EnvelopeError):
    reason = "stale"

    def __init__(self, ts_ms: int, now_ms: int, window_ms: int, why: str = "") -> None:
        detail = why or f"skew {ts_ms - now_ms} ms exceeds ±{window_ms} ms"
        super().__init__(f"envelope timestamp {ts_ms} refused: {detail}")
        self.ts_ms = ts_ms
        self.now_ms = now_ms
        self.window_ms = window_ms


class KeyRejectedError(EnvelopeError):
    reason = "key_rejected"

    def __init__(self, key_id: str, message: str) -> None:
        super().__init__(f"key {key_id!r}: {message}")
        self.key_id = key_id


class UnknownKeyError(KeyRejectedError):
    reason = "unknown_key"

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id, "not in the keyring")


class RevokedKeyError(KeyRejectedError):
    reason = "revoked_key"

    def __init__(self, key_id: str, revoked_ms: int) -> None:
        super().__init__(key_id, f"revoked at {revoked_ms}")
        self.revoked_ms = revoked_ms


class ExpiredKeyError(KeyRejectedError):
    reason = "expired_key"

    def __init__(self, key_id: str, not_after_ms: int) -> None:
        super().__init__(key_id, f"retired at {not_after_ms} (rotation overlap ended)")
        self.not_after_ms = not_after_ms


class SourceMismatchError(KeyRejectedError):
    reason = "source_mismatch"

    def __init__(self, key_id: str, owner: str, source: str) -> None:
        super().__init__(key_id, f"belongs to {owner!r}, envelope claims source {source!r}")
        self.owner = owner
        self.source = source


class BadSignatureError(EnvelopeError):
    reason = "bad_signature"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"signature by key {key_id!r} does not verify")
        self.key_id = key_id


class ReplayedEnvelopeError(EnvelopeError):
    reason = "replayed"

    def __init__(self, sender: str, why: str) -> None:
        super().__init__(f"replay from {sender!r}: {why}")
        self.sender = sender
        self.why = why
