"""Decode a device's telemetry payload into a :class:`~amcp.wire.telemetry.Reading`.

Accepted payloads are a JSON object or a msgpack map (told apart by the first byte: JSON
objects start with ``{`` after optional whitespace; a msgpack map starts with 0x80-0x8f,
0xde or 0xdf). Reserved keys:

- ``seq`` (int >= 0): the reading's sequence number within the device boot;
- ``boot`` (str): the device's boot id (a new one each time the device restarts);
- ``ts`` (int): when the reading was taken, Unix milliseconds;
- ``values`` (object): the measurements; without it, every other key is a measurement.

Measurements are numbers (integers in the signed 64-bit range, finite floats: NaN and
infinities are refused in msgpack as JSON refuses them), strings, booleans, null, or nested
objects/lists of those (at most ``MAX_DEPTH`` levels, at most ``max_fields`` leaves). Every
rejection raises a subclass of :class:`PayloadError` whose ``reason`` is the label counted in
metrics and stored in the dead-letter table.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import msgspec

from amcp.wire.telemetry import MAX_INT, MIN_INT, check_values

RESERVED = frozenset({"seq", "boot", "ts", "values"})
MAX_DEPTH = 8
MAX_SEQ = 2**63 - 1

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
    except RecursionError as exc:  # msgspec's own depth guard: a hostile nesting
        raise BadShapeError(f"values nest deeper than {MAX_DEPTH} levels") from exc
    raise MalformedPayloadError("payload is neither a JSON object nor a msgpack map")


Scalar = (
    Annotated[int, msgspec.Meta(ge=MIN_INT, le=MAX_INT)]
    | Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
    | str
    | bool
    | None
)
"""A flat measurement the fast path takes as it is: a 64-bit integer, a finite float..."""


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
    try:
        check_values(values, max_fields, max_depth=MAX_DEPTH)
    except ValueError as exc:
        raise BadShapeError(str(exc)) from None
    return DecodedPayload(seq=seq, boot=boot, ts_ms=ts, values=values)
