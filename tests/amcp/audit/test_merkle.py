"""The Merkle log against an independent RFC 9162 implementation written here from the RFC's
text (section 2.1): the recursive definitions of MTH, PATH and PROOF, and the two verification
algorithms, none of it shared with amcp.audit.merkle."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amcp.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)


# -- RFC 9162, 2.1.1: MTH({}) = SHA-256(); MTH({d0}) = SHA-256(0x00 || d0);
#    MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])), k the largest power of 2 < n
def h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def k_of(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: list[bytes]) -> bytes:
    if not d:
        return h(b"")
    if len(d) == 1:
        return h(b"\x00" + d[0])
    k = k_of(len(d))
    return h(b"\x01" + mth(d[:k]) + mth(d[k:]))


# 2.1.3.1: PATH(m, D[n])
def path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = k_of(n)
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


# 2.1.4.1: PROOF(m, D[n]) = SUBPROOF(m, D[n], true)
def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = k_of(n)
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


def proof(m: int, d: list[bytes]) -> list[bytes]:
    return subproof(m, d, True)


# 2.1.3.2, written again from the text
def ref_verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, inclusion_path: list[bytes], root: bytes
) -> bool:
    if leaf_index >= tree_size:
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in inclusion_path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = h(b"\x01" + p + r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn //= 2
                    sn //= 2
        else:
            r = h(b"\x01" + r + p)
        fn //= 2
        sn //= 2
    return sn == 0 and r == root


# 2.1.4.2, written again from the text
def ref_verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, consistency_path: list[bytes]
) -> bool:
    if not consistency_path:
        return False
    path_ = list(consistency_path)
    if first & (first - 1) == 0:
        path_ = [first_hash, *path_]
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn //= 2
        sn //= 2
    fr = sr = path_[0]
    for c in path_[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr = h(b"\x01" + c + fr)
            sr = h(b"\x01" + c + sr)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn //= 2
                    sn //= 2
        else:
            sr = h(b"\x01" + sr + c)
        fn //= 2
        sn //= 2
    return fr == first_hash and sr == second_hash and sn == 0


def _data(n: int) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(n)]


def _tree(d: list[bytes]) -> MerkleTree:
    return MerkleTree(leaf_hash(x) for x in d)


def test_the_empty_tree_and_a_known_vector() -> None:
    assert MerkleTree().root() == EMPTY_ROOT == h(b"")
    # RFC 6962's test vectors (the same hashing): the empty leaf
    assert (
        leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )


@given(st.integers(1, 140))
def test_roots_equal_the_rfc_definition_at_every_size(n: int) -> None:
    d = _data(n)
    tree = _tree(d)
    for size in range(n + 1):
        assert tree.root(size) == mth(d[:size])


@given(st.integers(1, 100), st.data())
def test_inclusion_proofs_are_the_rfc_paths_and_verify_both_ways(
    n: int, data: st.DataObject
) -> None:
    d = _data(n)
    tree = _tree(d)
    size = data.draw(st.integers(1, n))
    m = data.draw(st.integers(0, size - 1))
    got = tree.inclusion_proof(m, size)
    assert got == path(m, d[:size])
    root = mth(d[:size])
    assert ref_verify_inclusion(m, size, leaf_hash(d[m]), got, root)
    verify_inclusion(m, size, leaf_hash(d[m]), got, root)


@given(st.integers(2, 100), st.data())
def test_consistency_proofs_are_the_rfc_proofs_and_verify_both_ways(
    n: int, data: st.DataObject
) -> None:
    d = _data(n)
    tree = _tree(d)
    new = data.draw(st.integers(2, n))
    old = data.draw(st.integers(1, new - 1))
    got = tree.consistency_proof(old, new)
    assert got == proof(old, d[:new])
    args = (old, new, mth(d[:old]), mth(d[:new]), got)
    assert ref_verify_consistency(*args)
    verify_consistency(*args)


@given(st.integers(2, 64), st.data())
def test_a_tampered_proof_fails_in_both_verifiers(n: int, data: st.DataObject) -> None:
    d = _data(n)
    tree = _tree(d)
    m = data.draw(st.integers(0, n - 1))
    good = tree.inclusion_proof(m, n)
    root = tree.root()
    if good:
        i = data.draw(st.integers(0, len(good) - 1))
        bad = [*good]
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not ref_verify_inclusion(m, n, leaf_hash(d[m]), bad, root)
        with pytest.raises(ProofError):
            verify_inclusion(m, n, leaf_hash(d[m]), bad, root)
        with pytest.raises(ProofError):
            verify_inclusion(m, n, leaf_hash(d[m]), good[:-1], root)
    other = (m + 1) % n
    with pytest.raises(ProofError):
        verify_inclusion(other, n, leaf_hash(d[m]), good, root)  # the right leaf at the wrong place
    old = data.draw(st.integers(1, n - 1))
    cons = tree.consistency_proof(old, n)
    forked = mth([*d[: old - 1], b"forged"]) if old > 1 else leaf_hash(b"forged")
    assert not ref_verify_consistency(old, n, forked, root, cons)
    with pytest.raises(ProofError):
        verify_consistency(old, n, forked, root, cons)


def test_proofs_for_sizes_the_log_does_not_have_are_refused() -> None:
    tree = _tree(_data(10))
    for call in (
        lambda: tree.inclusion_proof(10, 10),
        lambda: tree.inclusion_proof(0, 11),
        lambda: tree.consistency_proof(0, 5),
        lambda: tree.consistency_proof(6, 5),
        lambda: tree.root(11),
    ):
        with pytest.raises(ProofError):
            call()
    with pytest.raises(ProofError, match="forked"):
        verify_consistency(5, 5, tree.root(5), tree.root(6), [])
