"""Decode a device's telemetry payload into a :class:`~amcp.wire.telemetry.Reading`.

Accepted payloads are a JSON object or a msgpack map (told apart by the first byte: JSON
objects start with ``{`` after optional whitespace; a msgpack map starts with 0x80-0x8f,
0xde or 0xdf). Reserved keys:

- ``seq`` (int >= 0): the reading's sequence number within the device boot;
- ``boot`` (str): the device's boot id (a new one each time the device restarts);
- ``ts`` (int): when the reading was taken, Unix milliseconds;
- ``values`` (object): the measurements; without it, every other key is a measurement.

Measurements are numbers, strings, booleans, null, or nested objects/lists of those. Every
rejection raises a subclass of :class:`PayloadError` whose ``reason`` is the label counted in
metrics and stored in the dead-letter table.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

RESERVED = frozenset({"seq", "boot", "ts", "values"})
MAX_DEPTH = 8
MAX_SEQ = 2**63 - 1

_SCALARS = frozenset({int, float, str, bool, type(None)})
_json = msgspec.json.Decoder()
_msgpack = msgspec.msgpack.Decoder()


class PayloadError(Exception):
    """A payload was refused; ``reason`` is a short stable label, the message says why."""

    reason = "malformed"


class OversizedPayloadError(PayloadError):
    reason = "oversized"


class MalformedPayloadError(PayloadError):
    reason = "malformed"


class BadShapeError(PayloadError):
    reason = "bad_shape"


class UnknownDeviceError(PayloadError):
    reason = "unknown_device"


class DecodedPayload(msgspec.Struct, frozen=True):
    seq: int | None
    boot: str | None
    ts_ms: int | None
    values: dict[str, Any]


def _decode_bytes(payload: bytes) -> Any:
    first = payload.lstrip()[:1]
    try:
        if first == b"{":
            return _json.decode(payload)
        if first and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)):
            return _msgpack.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedPayloadError(f"cannot decode payload: {exc}") from exc
    raise MalformedPayloadError("payload is neither a JSON object nor a msgpack map")


def _count_fields(value: Any, depth: int, limit: int) -> int:
    """Count leaf fields, refusing depth and size beyond the limits."""
    if depth > MAX_DEPTH:
        raise BadShapeError(f"values nest deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        n = 0
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadShapeError(f"field names must be strings, got {type(key).__name__}")
            n += _count_fields(item, depth + 1, limit)
            if n > limit:
                raise BadShapeError(f"more than {limit} fields")
        return n
    if isinstance(value, list):
        n = 0
        for item in value:
            n += _count_fields(item, depth + 1, limit)
            if n > limit:
                raise BadShapeError(f"more than {limit} fields")
        return max(n, 1)
    if value is None or isinstance(value, (int, float, str, bool)):
        return 1
    raise BadShapeError(f"unsupported value type {type(value).__name__}")


Scalar = int | float | str | bool | None


class _Canonical(msgspec.Struct, forbid_unknown_fields=True):
    """The common shape, decoded and validated by msgspec in one pass (the fast path)."""

    values: dict[str, Scalar]
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)] | None = None
    boot: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    ts: Annotated[int, msgspec.Meta(ge=0, lt=2**53)] | None = None


_fast_json = msgspec.json.Decoder(_Canonical)
_fast_msgpack = msgspec.msgpack.Decoder(_Canonical)


def decode_payload(payload: bytes, *, max_bytes: int, max_fields: int) -> DecodedPayload:
    if len(payload) > max_bytes:
        raise OversizedPayloadError(f"payload is {len(payload)} bytes, the limit is {max_bytes}")
    # Fast path: ``{"seq", "boot", "ts", "values": {flat scalars}}``. Anything else, including
    # every malformed payload, takes the general path below, which names what is wrong.
    fast = _decode_fast(payload, max_fields)
    if fast is not None:
        return fast
    return _decode_general(payload, max_fields)


def _decode_fast(payload: bytes, max_fields: int) -> DecodedPayload | None:
    decoder = _fast_json if payload[:1] == b"{" else _fast_msgpack
    try:
        c = decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter on bad UTF-8
        return None
    if not c.values or len(c.values) > max_fields:
        return None
    return DecodedPayload(seq=c.seq, boot=c.boot, ts_ms=c.ts, values=c.values)


def _decode_general(payload: bytes, max_fields: int) -> DecodedPayload:
    doc = _decode_bytes(payload)
    if not isinstance(doc, dict):
        raise BadShapeError("payload must be an object")
    seq = doc.get("seq")
    if seq is not None and (
        not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ
    ):
        raise BadShapeError(f"seq must be an integer >= 0, got {seq!r}"[:200])
    boot = doc.get("boot")
    if boot is not None and (not isinstance(boot, str) or not 0 < len(boot) <= 64):
        raise BadShapeError("boot must be a string of 1 to 64 characters")
    ts = doc.get("ts")
    if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**53):
        raise BadShapeError("ts must be an integer count of Unix milliseconds")
    if "values" in doc:
        values = doc["values"]
        if not isinstance(values, dict):
            raise BadShapeError("values must be an object")
        extra = set(doc) - RESERVED
        if extra:
            raise BadShapeError(f"unexpected keys beside values: {sorted(extra)[:5]}")
    else:
        values = {k: v for k, v in doc.items() if k not in RESERVED}
    if not values:
        raise BadShapeError("no measurements in payload")
    # the common case, a flat map of scalars, is checked without the recursive walk
    if not (
        len(values) <= max_fields
        and all(type(k) is str for k in values)
        and all(type(v) in _SCALARS for v in values.values())
    ):
        _count_fields(values, 0, max_fields)
    return DecodedPayload(seq=seq, boot=boot, ts_ms=ts, values=values)
