"""A Bloom filter over 16-byte keyed digests, sized to a power of two.

Positions come straight from the digest bits (three 32-bit slices), which is stable across
restarts and processes because the digest is a keyed BLAKE2b, not Python's salted ``hash``.
A hit means "maybe seen": callers confirm it in an exact store before calling anything a replay.
"""

from __future__ import annotations

K = 3
"""Probes per key: with 16 bits per key the false-positive rate is about 0.5%."""


class BloomFilter:
    __slots__ = ("_bits", "_mask", "count")

    def __init__(self, m_bits: int) -> None:
        m = 8
        while m < m_bits:
            m <<= 1
        if m > 1 << 32:
            raise ValueError("Bloom filter limited to 2**32 bits (32-bit digest slices)")
        self._bits = bytearray(m // 8)
        self._mask = m - 1
        self.count = 0

    @classmethod
    def for_capacity(cls, capacity: int, bits_per_key: int = 16) -> BloomFilter:
        return cls(max(64, capacity * bits_per_key))

    @property
    def size_bytes(self) -> int:
        return len(self._bits)

    def add(self, digest: bytes) -> bool:
        """Set ``digest``'s bits; return True if all were already set (a possible repeat)."""
        h = int.from_bytes(digest, "little")
        mask = self._mask
        a = h & mask
        b = (h >> 32) & mask
        c = (h >> 64) & mask
        bits = self._bits
        ia, ib, ic = a >> 3, b >> 3, c >> 3
        ba, bb, bc = 1 << (a & 7), 1 << (b & 7), 1 << (c & 7)
        if bits[ia] & ba and bits[ib] & bb and bits[ic] & bc:
            return True
        bits[ia] |= ba
        bits[ib] |= bb
        bits[ic] |= bc
        self.count += 1
        return False
