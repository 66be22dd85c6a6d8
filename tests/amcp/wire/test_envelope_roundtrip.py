"""Round-trips, tamper detection and decoder fuzzing for aMCP envelopes."""

from __future__ import annotations

import contextlib
import os

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amcp.crypto import Ed25519Signer, HmacSigner, Keyring
from amcp.replay import ReplayGuard
from amcp.wire import (
    AlgedonicSignal,
    BadSignatureError,
    BatchAck,
    BatchNack,
    CapabilityAnnouncement,
    Command,
    EnvelopeError,
    Event,
    Heartbeat,
    Intent,
    IntentUpdate,
    MalformedEnvelopeError,
    MalformedPayloadError,
    Message,
    Opener,
    OversizedEnvelopeError,
    PolicyBundle,
    Reading,
    SourceMismatchError,
    SyncFrame,
    TelemetryBatch,
    UnsupportedVersionError,
)
from amcp.wire.envelope import Frame, decode_frame, encode_header, signing_input
from amcp.wire.messages import MESSAGE_TYPES, kind_of
from tests.amcp.wire.envelope_support import T0, Link, SetClock, batch

text = st.text(max_size=20)
ints = st.integers(min_value=0, max_value=2**62)
json_values = st.dictionaries(
    text, st.one_of(st.integers(-(2**62), 2**62), text, st.booleans(), st.none()), max_size=3
)
readings = st.builds(
    Reading, device=text, boot=text, seq=ints, ts_ms=ints, values=json_values, received_ms=ints
)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(TelemetryBatch, batch_id=text, gateway=text, readings=st.lists(readings, max_size=4)),
    st.builds(
        BatchAck,
        batch_id=text,
        stored=ints,
        duplicates=ints,
        refused=st.dictionaries(st.integers(0, 500), text, max_size=3),
    ),
    st.builds(BatchNack, batch_id=text, reason=text, retry=st.booleans(), detail=text),
    st.builds(Event, name=text, ts_ms=ints, attrs=json_values),
    st.builds(
        AlgedonicSignal,
        valence=st.sampled_from(["pain", "pleasure"]),
        intensity=st.floats(0, 1),
        origin=text,
        reason=text,
        ts_ms=ints,
    ),
    st.builds(Command, command_id=text, target=text, action=text, args=json_values),
    st.builds(Intent, intent_id=text, text=text, capability=st.none() | text),
    st.builds(
        IntentUpdate,
        intent_id=text,
        state=st.sampled_from(["accepted", "running", "result", "done", "failed"]),
    ),
    st.builds(CapabilityAnnouncement, node=text, version=ints, capabilities=st.lists(text)),
    st.builds(PolicyBundle, name=text, version=ints, expires_ms=ints, body=st.binary()),
    st.builds(Heartbeat, node=text, seq=ints, ts_ms=ints),
    st.builds(SyncFrame, stream=text, data=st.binary()),
)
topics = st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t)
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def fresh_opener(link: Link) -> Opener:
    return Opener(link.keyring, ReplayGuard(None), link.clock)


def test_every_kind_is_covered_by_the_strategy() -> None:
    assert len({t.__struct_config__.tag for t in MESSAGE_TYPES}) == len(MESSAGE_TYPES) == 12


@fixture_ok
@given(message=messages, topic=topics, use_hmac=st.booleans())
def test_round_trip(link: Link, message: Message, topic: str, use_hmac: bool) -> None:
    sealer = link.hmac_sealer if use_hmac else link.sealer
    opened = fresh_opener(link).open(sealer.seal(message, topic), topic)
    assert opened is not None
    assert opened.message == message
    assert opened.header.kind == kind_of(message)
    assert opened.header.source == "gw-1"
    assert opened.topic == topic


@fixture_ok
@given(bit=st.integers(min_value=0), use_hmac=st.booleans())
def test_any_flipped_bit_is_rejected(link: Link, bit: int, use_hmac: bool) -> None:
    sealer = link.hmac_sealer if use_hmac else link.sealer
    data = bytearray(sealer.seal(batch(2), "up/gw-1"))
    bit %= len(data) * 8
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(EnvelopeError):
        fresh_opener(link).open(bytes(data), "up/gw-1")


@fixture_ok
@given(topic=topics, other=topics, use_hmac=st.booleans())
def test_changed_topic_is_rejected(link: Link, topic: str, other: str, use_hmac: bool) -> None:
    sealer = link.hmac_sealer if use_hmac else link.sealer
    data = sealer.seal(BatchAck(batch_id="b", stored=1), topic)
    if other != topic:
        with pytest.raises(BadSignatureError):
            fresh_opener(link).open(data, other)


@settings(max_examples=300)
@given(data=st.binary(max_size=300))
def test_decoder_fuzz_raises_only_typed_errors(data: bytes) -> None:
    signer = HmacSigner("gw-1", b"k" * 32)
    opener = Opener(Keyring([signer.entry()]), ReplayGuard(None), SetClock())
    with contextlib.suppress(EnvelopeError):
        opener.open(data, "t")


@st.composite
def structured_garbage(draw: st.DrawFn) -> bytes:
    """Frames that decode as msgpack arrays, to get past the outer layer into the header."""
    header = draw(
        st.one_of(
            st.binary(max_size=60),
            st.dictionaries(st.sampled_from(["kind", "id", "source", "nonce", "ts_ms"]), ints).map(
                msgspec.msgpack.encode
            ),
        )
    )
    version = draw(st.sampled_from([1, 1, 2, -1]))
    return msgspec.msgpack.encode([version, header, draw(st.binary(max_size=40)), b"s" * 64])


@given(data=structured_garbage())
def test_structured_fuzz_raises_only_typed_errors(data: bytes) -> None:
    opener = Opener(Keyring(), ReplayGuard(None), SetClock())
    with contextlib.suppress(EnvelopeError):
        opener.open(data, "t")


def test_size_limit_is_checked_before_decoding(link: Link) -> None:
    opener = Opener(link.keyring, link.guard, link.clock, max_bytes=100)
    with pytest.raises(OversizedEnvelopeError) as err:
        opener.open(b"\xff" * 101, "t")  # not msgpack at all: size wins
    assert err.value.size == 101


def test_unknown_wire_version_is_distinct(link: Link) -> None:
    frame = msgspec.msgpack.decode(link.sealer.seal(batch(), "t"), type=Frame)
    bumped = msgspec.msgpack.encode(Frame(2, frame.header, frame.payload, frame.signature))
    with pytest.raises(UnsupportedVersionError):
        link.opener.open(bumped, "t")


def test_garbage_is_malformed(link: Link) -> None:
    with pytest.raises(MalformedEnvelopeError):
        link.opener.open(b"\x93\x01\x02", "t")


def test_payload_kind_must_match_signed_header(link: Link, clock: SetClock) -> None:
    """A correctly signed envelope whose payload is another kind is refused after verifying."""
    data = link.sealer.seal(BatchAck(batch_id="b", stored=1), "t")
    frame, header = decode_frame(data)
    hdr = encode_header(msgspec.structs.replace(header, kind="heartbeat"))
    sig = link.signer.sign(signing_input(1, b"t", hdr, frame.payload))
    forged = msgspec.msgpack.encode(Frame(1, hdr, frame.payload, sig))
    with pytest.raises(MalformedPayloadError):
        link.opener.open(forged, "t")
    assert clock.now == T0


def test_source_must_be_the_key_owner(link: Link) -> None:
    """Another node's valid key cannot speak for gw-1 (reflection, impersonation)."""
    mallory = Ed25519Signer.generate("gw-2")
    link.keyring.add(mallory.entry())
    data = link.sealer.seal(batch(), "t")
    frame, header = decode_frame(data)
    hdr = encode_header(msgspec.structs.replace(header, key_id=mallory.key_id))
    sig = mallory.sign(signing_input(1, b"t", hdr, frame.payload))
    with pytest.raises(SourceMismatchError):
        link.opener.open(msgspec.msgpack.encode(Frame(1, hdr, frame.payload, sig)), "t")


def test_hmac_and_ed25519_key_ids_never_collide() -> None:
    secret = os.urandom(32)
    assert HmacSigner("a", secret).key_id.startswith("hm:")
    assert Ed25519Signer.generate("a").key_id.startswith("ed:")
