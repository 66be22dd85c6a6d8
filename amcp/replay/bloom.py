"""A Bloom filter over 128-bit keyed hashes, sized to a power of two.

Positions are three 32-bit slices of the *top* 96 bits of the hash (the replay guard's hash is
a multiply-shift, whose high bits are the ones that depend on every input bit). The hash is
keyed by a salt kept with the store, so positions are stable across restarts and processes,
unlike Python's salted ``hash``. A hit means "maybe seen": callers confirm it in an exact store
before calling anything a replay. :class:`amcp.replay.ReplayGuard` inlines :meth:`add` on its
hot path; keep the two in step (``tests/amcp/wire/test_replay_store.py`` checks they agree).
"""

from __future__ import annotations

K = 3
"""Probes per key: with 16 bits per key the false-positive rate is about 0.5%."""


class BloomFilter:
    __slots__ = ("bits", "count", "mask")

    def __init__(self, m_bits: int) -> None:
        m = 8
        while m < m_bits:
            m <<= 1
        if m > 1 << 32:
            raise ValueError("Bloom filter limited to 2**32 bits (32-bit hash slices)")
        self.bits = bytearray(m // 8)
        self.mask = m - 1
        self.count = 0

    @classmethod
    def for_capacity(cls, capacity: int, bits_per_key: int = 16) -> BloomFilter:
        return cls(max(64, capacity * bits_per_key))

    @property
    def size_bytes(self) -> int:
        return len(self.bits)

    def add(self, h: int) -> bool:
        """Set the bits of the 128-bit hash ``h``; True if all were already set (maybe seen)."""
        mask = self.mask
        a = (h >> 96) & mask
        b = (h >> 64) & mask
        c = (h >> 32) & mask
        bits = self.bits
        ia, ib, ic = a >> 3, b >> 3, c >> 3
        ba, bb, bc = 1 << (a & 7), 1 << (b & 7), 1 << (c & 7)
        if bits[ia] & ba and bits[ib] & bb and bits[ic] & bc:
            return True
        bits[ia] |= ba
        bits[ib] |= bb
        bits[ic] |= bc
        self.count += 1
        return False
