"""Sync frames: round trips, compression, and decoders that fail only with FrameError."""

from __future__ import annotations

import contextlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amcp.store import ChangeSet, Row
from amcp.store.rows import encode_changes, encode_rows
from amcp.sync import Authority, NamespaceRule, Owner
from amcp.sync.frames import (
    CODEC_RAW,
    CODEC_ZLIB,
    MAX_CHANGES_BYTES,
    Ack,
    Delta,
    FrameError,
    Hello,
    compress,
    decode_frame,
    encode_frame,
    unpack_changes,
)

rows = st.lists(
    st.builds(
        Row,
        st.sampled_from(["twin.desired", "policies"]),
        st.text(max_size=20),
        st.none() | st.binary(max_size=64),
        st.integers(0, 2**63 - 1),
        st.text(min_size=1, max_size=10),
    ),
    max_size=30,
)
frames = st.one_of(
    st.builds(Hello, st.text(), st.text(), st.integers(0, 2**63 - 1), st.booleans(), st.booleans()),
    st.builds(Ack, st.text(), st.integers(0, 2**63 - 1)),
)


@given(frames)
def test_sync_frames_round_trip(frame: Hello | Ack) -> None:
    assert decode_frame(encode_frame(frame)) == frame


@given(rows, st.integers(0, 2000))
def test_sync_delta_changes_round_trip_with_and_without_compression(
    items: list[Row], above: int
) -> None:
    changes = ChangeSet(items, [], 7)
    data, codec = compress(encode_changes(changes), above=above)
    delta = decode_frame(encode_frame(Delta("db", 3, 7, data, codec)))
    assert isinstance(delta, Delta)
    assert unpack_changes(delta) == changes


def test_sync_compression_only_when_it_pays() -> None:
    big = encode_changes(
        ChangeSet([Row("ns", f"k{i}", b"v" * 20, i, "s") for i in range(200)], [], 1)
    )
    data, codec = compress(big, above=512)
    assert codec == CODEC_ZLIB
    assert len(data) < len(big) / 4
    small, codec = compress(b"\x93\x90\x90\x01", above=512)
    assert (small, codec) == (b"\x93\x90\x90\x01", CODEC_RAW)


@given(st.binary(max_size=300))
def test_sync_decode_frame_raises_only_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_frame(data)


@given(frames, rows, st.data())
def test_sync_decode_frame_of_damaged_frames_raises_only_frame_error(
    frame: Hello | Ack, items: list[Row], data: st.DataObject
) -> None:
    delta = Delta("db", 1, 2, encode_changes(ChangeSet(items, [], 2)))
    raw = bytearray(encode_frame(data.draw(st.sampled_from([frame, delta]))))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(FrameError):
        decoded = decode_frame(bytes(raw[:cut]))
        if isinstance(decoded, Delta):
            unpack_changes(decoded)


@given(st.binary(max_size=300), st.integers(-3, 3))
def test_sync_unpack_changes_raises_only_frame_error(data: bytes, codec: int) -> None:
    with contextlib.suppress(FrameError):
        unpack_changes(Delta("db", 0, 1, data, codec))


def test_sync_delta_that_inflates_too_far_is_refused() -> None:
    bomb = zlib.compress(b"\x00" * (MAX_CHANGES_BYTES * 4))
    with pytest.raises(FrameError, match="inflates past"):
        unpack_changes(Delta("db", 0, 1, bomb, CODEC_ZLIB))


def test_sync_delta_with_a_backwards_range_is_malformed() -> None:
    with pytest.raises(FrameError, match="empty or negative"):
        decode_frame(encode_frame(Delta("db", 5, 4, b"", CODEC_RAW)))


def test_sync_one_row_stays_small() -> None:
    row = Row("twin.desired", "dev1/mode", b"\xa4auto", 1_900_000_000_000 << 16, "cloud")
    assert len(encode_rows([row])) <= 64


def test_sync_authority_rules() -> None:
    auth = Authority(
        [
            NamespaceRule(namespace="policy.*", owner=Owner.CLOUD),
            NamespaceRule(namespace="policy.local.*", owner=Owner.LOCAL),
            NamespaceRule(namespace="caps", owner=Owner.GATEWAY, keyed=True),
            NamespaceRule(namespace="twin.reported", owner=Owner.GATEWAY, fanout=False),
        ],
        default_owner=Owner.LOCAL,
    )

    def row(ns: str, key: str = "k", site: str = "gw-1") -> Row:
        return Row(ns, key, b"v", 1, site)

    assert auth.rule("policy.fw").owner is Owner.CLOUD
    assert auth.rule("policy.local.x").owner is Owner.LOCAL  # the longest prefix wins
    assert auth.rule("unnamed").owner is Owner.LOCAL
    assert auth.from_gateway("gw-1", row("policy.fw")) == "namespace owned by cloud"
    assert auth.from_gateway("gw-1", row("caps", "gw-1/lamp")) is None
    assert auth.from_gateway("gw-1", row("caps", "gw-2/lamp")) == "key outside gw-1/"
    assert auth.from_gateway("gw-1", row("twin.reported", site="gw-2")) is not None
    assert auth.from_cloud(row("policy.fw", site="cloud")) is None
    assert auth.from_cloud(row("twin.reported", site="cloud")) is not None
    assert auth.from_cloud(row("twin.reported", site="gw-1")) is None  # its own, resynced
    assert auth.from_cloud(row("unnamed", site="cloud")) == "namespace is local"
    assert auth.to_gateway("gw-2", row("caps", "gw-1/lamp"))  # fanned out
    assert not auth.to_gateway("gw-2", row("twin.reported"))  # not fanned out
    assert auth.to_gateway("gw-1", row("twin.reported"))  # its own (only sent in a resync)
    assert not auth.to_cloud("gw-1", row("twin.reported", site="gw-2"))
    assert not auth.to_cloud("gw-1", row("unnamed"))
