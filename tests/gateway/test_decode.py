"""Payload decoding: what is accepted, and that nothing else escapes as a crash."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.decode import (
    BadShapeError,
    MalformedPayloadError,
    OversizedPayloadError,
    PayloadError,
    decode_payload,
)

LIMITS = {"max_bytes": 4096, "max_fields": 64}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
values = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda k: k not in {"seq", "boot", "ts", "values"}),
    st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    min_size=1,
    max_size=8,
)


@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_payload_errors(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode_payload(data, **LIMITS)


@given(
    doc=st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_arbitrary_json_documents_raise_only_payload_errors(doc: Any) -> None:
    for raw in (json.dumps(doc).encode(), msgspec.msgpack.encode(doc)):
        with contextlib.suppress(PayloadError):
            decode_payload(raw, **LIMITS)


@given(
    vals=values,
    seq=st.integers(0, 2**62),
    ts=st.integers(0, 2**52),
    encode=st.sampled_from(["json", "msgpack"]),
)
def test_valid_readings_round_trip(vals: dict[str, Any], seq: int, ts: int, encode: str) -> None:
    doc = {"seq": seq, "boot": "b", "ts": ts, "values": vals}
    raw = json.dumps(doc).encode() if encode == "json" else msgspec.msgpack.encode(doc)
    try:
        p = decode_payload(raw, **LIMITS)
    except BadShapeError:  # only when there are too many leaf fields
        return
    assert (p.seq, p.boot, p.ts_ms) == (seq, "b", ts)
    expected = msgspec.json.decode(msgspec.json.encode(vals)) if encode == "json" else vals
    assert p.values == expected


def test_flat_form_takes_every_other_key_as_a_measurement() -> None:
    p = decode_payload(b'{"seq": 3, "temp": 21.5, "ok": true}', **LIMITS)
    assert p.seq == 3
    assert p.values == {"temp": 21.5, "ok": True}
    assert p.boot is None
    assert p.ts_ms is None


@pytest.mark.parametrize(
    ("payload", "error", "words"),
    [
        (b"x" * 5000, OversizedPayloadError, "5000 bytes, the limit is 4096"),
        (b"{oops", MalformedPayloadError, "cannot decode"),
        (b"[1, 2]", MalformedPayloadError, "neither a JSON object nor a msgpack map"),
        (b'{"seq": -1, "t": 1}', BadShapeError, "seq must be an integer"),
        (b'{"seq": true, "t": 1}', BadShapeError, "seq must be an integer"),
        (b'{"ts": 1.5, "t": 1}', BadShapeError, "ts must be an integer"),
        (b'{"boot": "", "t": 1}', BadShapeError, "boot must be a string"),
        (b'{"values": 3}', BadShapeError, "values must be an object"),
        (b'{"values": {"a": 1}, "b": 2}', BadShapeError, "unexpected keys beside values"),
        (b'{"seq": 1}', BadShapeError, "no measurements"),
        (json.dumps({"a": list(range(100))}).encode(), BadShapeError, "more than 64 fields"),
    ],
)
def test_refusals_name_what_was_wrong(
    payload: bytes, error: type[PayloadError], words: str
) -> None:
    with pytest.raises(error, match=words):
        decode_payload(payload, **LIMITS)


def test_deep_nesting_is_refused() -> None:
    doc: Any = 1
    for _ in range(20):
        doc = {"a": doc}
    with pytest.raises(BadShapeError, match="nest deeper"):
        decode_payload(json.dumps({"v": doc}).encode(), **LIMITS)


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (b'{"values": {"x": 123456789012345678901234567890}}', "values.x"),
        (msgspec.msgpack.encode({"values": {"x": 2**64 - 1}}), "values.x"),
        (msgspec.msgpack.encode({"values": {"x": -(2**63)}}), None),  # the lowest that fits
        (msgspec.msgpack.encode({"values": {"a": {"b": [1, 2**63]}}}), "values.a.b[1]"),
        (msgspec.msgpack.encode({"values": {"x": float("nan")}}), "values.x"),
        (msgspec.msgpack.encode({"values": {"x": [float("-inf")]}}), "values.x[0]"),
        (msgspec.msgpack.encode({"values": {"x": msgspec.msgpack.Ext(1, b"a")}}), "values.x"),
        (b'{"values": {"x": ' + b"[" * 1000 + b"]" * 1000 + b"}}", "nest deeper"),
    ],
)
def test_values_the_store_cannot_represent_are_refused_with_their_path(
    payload: bytes, path: str | None
) -> None:
    """One rule for JSON and msgpack: integers in the signed 64-bit range, finite floats
    (msgpack NaN used to be stored as null while JSON NaN was refused)."""
    if path is None:
        assert decode_payload(payload, max_bytes=65536, max_fields=64).values == {"x": -(2**63)}
        return
    with pytest.raises(BadShapeError, match=re.escape(path)):
        decode_payload(payload, max_bytes=65536, max_fields=64)
