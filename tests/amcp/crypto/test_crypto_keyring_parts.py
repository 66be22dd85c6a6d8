"""The keyring's verifier over parts of the signed bytes agrees with the whole-bytes one."""

from __future__ import annotations

import itertools
import os

from hypothesis import given
from hypothesis import strategies as st

from amcp.crypto import Ed25519Signer, HmacSigner, Keyring, Signer
from amcp.wire.envelope import signing_input, signing_parts, topic_prefix

SIGNERS: list[Signer] = [Ed25519Signer.generate("gw"), HmacSigner("gw", os.urandom(32))]


@given(
    which=st.sampled_from(range(len(SIGNERS))),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=4),
    flip=st.integers(0, 299),
)
def test_parts_verifier_equals_whole_verifier(
    which: int, data: bytes, cuts: list[int], flip: int
) -> None:
    signer = SIGNERS[which]
    keyring = Keyring([signer.entry()])
    whole = keyring.get(signer.key_id)
    parted = keyring.get_parts(signer.key_id)
    assert whole is not None
    assert parted is not None
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    parts = [memoryview(data)[a:b] for a, b in itertools.pairwise(bounds)]
    signature = signer.sign(data)
    assert parted[1](memoryview(signature), parts) is whole[1](signature, data) is True
    if data:
        i = flip % len(data)
        bad = data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
        assert parted[1](signature, [bad]) is whole[1](signature, bad) is False


@given(topic=st.text(max_size=40), header=st.binary(max_size=80), payload=st.binary(max_size=80))
def test_signing_parts_join_to_the_signing_input(topic: str, header: bytes, payload: bytes) -> None:
    prefix = topic_prefix(1, topic.encode())
    head, body = signing_parts(prefix, memoryview(header), memoryview(payload))
    assert head + bytes(body) == signing_input(1, topic.encode(), header, payload)


def test_parts_verifier_follows_rotation_and_revocation_state() -> None:
    signer = HmacSigner("gw", os.urandom(32))
    keyring = Keyring([signer.entry()])
    keyring.revoke(signer.key_id, 5)
    found = keyring.get_parts(signer.key_id)
    assert found is not None
    assert found[0].revoked_ms == 5
    assert keyring.get_parts("hm:unknown") is None
