"""An append-only Merkle tree as RFC 9162 (Certificate Transparency 2.0) defines it, section 2.1.

- Hashing with domain separation: a leaf is ``SHA-256(0x00 || data)``, an inner node
  ``SHA-256(0x01 || left || right)``; the hash of the empty tree is ``SHA-256()``.
- The tree over ``n`` leaves splits at ``k``, the largest power of two below ``n`` (2.1.1), so
  every left subtree is complete and aligned: :class:`MerkleTree` keeps the hash of every
  complete aligned subtree (``levels[h][i]`` covers leaves ``i * 2**h`` to ``(i + 1) * 2**h``),
  which an append extends in O(log n), and answers any ``MTH(D[a:b])`` the definitions need
  from O(log n) of them: tree heads, inclusion proofs (2.1.3.1) and consistency proofs
  (2.1.4.1) of any earlier size cost O(log n) hashes, not a pass over the leaves.
- :func:`verify_inclusion` and :func:`verify_consistency` are the verification algorithms of
  2.1.3.2 and 2.1.4.2, step for step: they need only the proof, the sizes and the hashes.

The tree is in memory; its owner persists the leaves (their hashes) and builds the tree again
on open (:meth:`MerkleTree.extend`: a million leaves in about a second).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof that does not verify, or that was asked for sizes the tree does not have."""


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = _sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        self.extend(leaf_hashes)

    def __len__(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> int:
        """Add one leaf hash; returns its index."""
        index = len(self.levels[0])
        self.levels[0].append(leaf)
        h, i, node = 0, index, leaf
        while i & 1:  # this node completes its parent's subtree
            node = node_hash(self.levels[h][i - 1], node)
            h, i = h + 1, i >> 1
            if len(self.levels) == h:
                self.levels.append([])
            self.levels[h].append(node)
        return index

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def leaf(self, index: int) -> bytes:
        return self.levels[0][index]

    # -- MTH over a range -----------------------------------------------------------------
    def _mth(self, start: int, n: int) -> bytes:
        """``MTH(D[start:start + n])`` for a range the RFC's recursion produces (``start`` is
        a multiple of the largest power of two not above ``n``)."""
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0:  # complete: kept
            h = n.bit_length() - 1
            return self.levels[h][start >> h]
        k = _split(n)
        return node_hash(self._mth(start, k), self._mth(start + k, n - k))

    def root(self, size: int | None = None) -> bytes:
        """The tree head hash of the first ``size`` leaves (all of them by default)."""
        n = len(self) if size is None else size
        if not 0 <= n <= len(self):
            raise ProofError(f"no tree of size {n}: the log has {len(self)} leaves")
        return self._mth(0, n)

    # -- proofs (RFC 9162 2.1.3.1 and 2.1.4.1) ----------------------------------------------
    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """``PATH(index, D[0:size])``: the audit path of leaf ``index`` in the tree of
        ``size`` leaves."""
        n = len(self) if size is None else size
        if not 0 <= index < n <= len(self):
            raise ProofError(f"no leaf {index} in a tree of size {n} (the log has {len(self)})")
        return self._path(index, 0, n)

    def _path(self, m: int, start: int, n: int) -> list[bytes]:
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*self._path(m, start, k), self._mth(start + k, n - k)]
        return [*self._path(m - k, start + k, n - k), self._mth(start, k)]

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """``PROOF(old, D[0:new])``: that the tree of ``old`` leaves is a prefix of the tree
        of ``new`` leaves."""
        n = len(self) if new is None else new
        if not 0 < old <= n <= len(self):
            raise ProofError(f"no consistency proof from {old} to {n} (the log has {len(self)})")
        return self._subproof(old, 0, n, complete=True)

    def _subproof(self, m: int, start: int, n: int, *, complete: bool) -> list[bytes]:
        if m == n:
            return [] if complete else [self._mth(start, n)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, start, k, complete=complete), self._mth(start + k, n - k)]
        return [*self._subproof(m - k, start + k, n - k, complete=False), self._mth(start, k)]


# -- verification (RFC 9162 2.1.3.2 and 2.1.4.2) -----------------------------------------------
def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` at ``index`` in a tree of ``size``
    leaves (2.1.3.2); :class:`ProofError` when the proof cannot be for those numbers."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below the tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof shorter than the tree is deep")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    found = root_from_inclusion(index, size, leaf, proof)
    if found != root:
        raise ProofError(
            f"inclusion proof of leaf {index} in size {size} gives {found.hex()}, "
            f"not the tree head's {root.hex()}"
        )


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """That the tree of ``old`` leaves with ``old_root`` is a prefix of the tree of ``new``
    leaves with ``new_root`` (2.1.4.2); :class:`ProofError` naming what failed otherwise."""
    if not 0 < old <= new:
        raise ProofError(f"no consistency between sizes {old} and {new}")
    if old == new:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("equal sizes with different roots: the log forked")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the proof's implicit first node
        path.insert(0, old_root)
    fr, sr = _fold_consistency(old - 1, new - 1, path)
    if fr != old_root:
        raise ProofError(f"the proof gives {fr.hex()} for the old size {old}, not its head")
    if sr != new_root:
        raise ProofError(f"the proof gives {sr.hex()} for the new size {new}, not its head")


def _fold_consistency(fn: int, sn: int, path: list[bytes]) -> tuple[bytes, bytes]:
    """Steps 4 to 7 of 2.1.4.2: the old and new roots the path leads to."""
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof shorter than the tree is deep")
    return fr, sr
