"""Replay defence for authenticated envelopes, persisted in SQLite so it survives restarts.

Call :meth:`ReplayGuard.check` only after the signature verified: it records what it accepts.

- **Counter senders** (the main path): per (sender, epoch) the highest counter seen and a
  sliding bitmap of the ``counter_window`` counters below it (RFC 6479 style). Exact and tiny.
- **Nonce senders**: a Bloom filter per generation of envelope *timestamps* (a replay carries
  the same signed timestamp, so it lands in the same generation). A Bloom hit is confirmed in an
  exact store (SQLite rows of keyed digests plus a small unflushed buffer); a false positive
  is counted and the message accepted. Generations older than the clock window are dropped:
  anything they could match is already refused as stale.

Writes are batched (every ``flush_every`` records, on :meth:`flush` and :meth:`close`). If the
process dies before a flush, the next open finds the store marked unclean and refuses every
envelope stamped before that restart: state that may be missing can never admit a replay.
Thread-safe: one lock around each check (SQLite runs under it, so from async code call the
opener in a worker thread).
"""

from __future__ import annotations

import enum
import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol, Self

from amcp.replay.bloom import BloomFilter

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    sender TEXT NOT NULL, epoch INTEGER NOT NULL, top INTEGER NOT NULL,
    bitmap BLOB NOT NULL, last_ts INTEGER NOT NULL, PRIMARY KEY (sender, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces (
    gen INTEGER NOT NULL, digest BLOB NOT NULL, PRIMARY KEY (gen, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    scope TEXT PRIMARY KEY, version INTEGER NOT NULL
) WITHOUT ROWID;
"""


class WallClock(Protocol):
    """Anything with ``time()`` in Unix seconds (``amcp.runtime.clock`` clocks qualify)."""

    def time(self) -> float: ...


class Verdict(enum.Enum):
    ACCEPT = "accept"
    REPLAY = "replay"
    BELOW_WINDOW = "below_window"
    """Counter older than the sliding window: cannot be told apart from a replay."""
    BEFORE_RESTART = "before_restart"
    """Stamped before an unclean restart, when replay state may have been lost."""


# Enum member lookups cost measurably on the hot path; bind them once.
_ACCEPT = Verdict.ACCEPT
_REPLAY = Verdict.REPLAY
_BELOW = Verdict.BELOW_WINDOW


class ReplayGuard:
    def __init__(
        self,
        path: Path | str | None = None,
        *,
        window_s: float = 90.0,
        counter_window: int = 1024,
        expected_nonces: int = 100_000,
        bloom_bits: int | None = None,
        flush_every: int = 8192,
        clock: WallClock | None = None,
    ) -> None:
        """``path=None`` keeps state in memory (tests, benchmarks); ``bloom_bits`` overrides
        the per-generation filter size computed from ``expected_nonces`` per window."""
        self.window_ms = int(window_s * 1000)
        self.gen_ms = self.window_ms
        self._counter_window = counter_window
        self._counter_mask = (1 << counter_window) - 1
        self._bloom_bits = bloom_bits or expected_nonces * 16
        self._flush_every = flush_every
        self._clock: WallClock = clock or time
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path), check_same_thread=False
        )
        self._db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + _SCHEMA)
        self._counters: dict[tuple[str, int], list[int]] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._gens: dict[int, BloomFilter] = {}
        self._pending: set[tuple[int, bytes]] = set()
        self._next_expiry = 0
        self._unflushed = 0
        self.false_positives = 0
        self.floor_ms = 0
        self._load()

    # -- persistence ------------------------------------------------------------------
    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _set_meta(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _load(self) -> None:
        salt = self._meta("salt")
        if salt is None:
            salt = os.urandom(16)
            self._set_meta("salt", salt)
        self._salt = salt
        if self._meta("clean") == b"0":
            self.floor_ms = int(self._clock.time() * 1000) + 1  # refuse up to restart
        self._set_meta("clean", b"0")
        self._db.commit()
        for sender, epoch, top, bitmap, last_ts in self._db.execute("SELECT * FROM counters"):
            self._counters[sender, epoch] = [top, int.from_bytes(bitmap, "big"), last_ts]
        for gen, digest in self._db.execute("SELECT gen, digest FROM nonces"):
            self._bloom(gen).add(digest)

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        nbytes = (self._counter_window + 7) // 8
        rows = [
            (s, e, st[0], st[1].to_bytes(nbytes, "big"), st[2])
            for (s, e) in self._dirty
            if (st := self._counters.get((s, e))) is not None
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO counters VALUES (?,?,?,?,?)", rows)
            # sorted: B-tree inserts in key order touch far fewer pages than random order
            self._db.executemany("INSERT OR IGNORE INTO nonces VALUES (?,?)", sorted(self._pending))
        self._dirty.clear()
        self._pending.clear()
        self._unflushed = 0

    def close(self) -> None:
        """Flush and mark the store clean, so the next open trusts it fully."""
        with self._lock:
            self._flush()
            self._set_meta("clean", b"1")
            self._db.commit()
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks -----------------------------------------------------------------------
    def check(  # noqa: PLR0917 - hot path: positional is measurably cheaper
        self,
        sender: str,
        ts_ms: int,
        nonce: bytes,
        epoch: int | None,
        counter: int | None,
        now_ms: int,
    ) -> Verdict:
        """Accept and record, or say why not. ``sender`` is the key id that signed.

        The counter path is inlined: it runs for nearly every envelope (benchmark target).
        """
        with self._lock:
            if ts_ms < self.floor_ms:
                return Verdict.BEFORE_RESTART
            if now_ms >= self._next_expiry:
                self._expire(now_ms)
            if counter is None or epoch is None:
                verdict = self._check_nonce(sender, ts_ms, nonce)
            else:
                key = (sender, epoch)
                state = self._counters.get(key)
                if state is None:
                    self._counters[key] = [counter, 1, ts_ms]
                else:
                    top = state[0]
                    if counter > top:
                        state[1] = ((state[1] << (counter - top)) | 1) & self._counter_mask
                        state[0] = counter
                    else:
                        behind = top - counter
                        if behind >= self._counter_window:
                            return _BELOW
                        bit = 1 << behind
                        if state[1] & bit:
                            return _REPLAY
                        state[1] |= bit
                    state[2] = max(state[2], ts_ms)
                self._dirty.add(key)
                verdict = _ACCEPT
            self._unflushed += 1
            if self._unflushed >= self._flush_every:
                self._flush()
            return verdict

    def _digest(self, sender: str, nonce: bytes) -> bytes:
        return hashlib.blake2b(
            sender.encode() + b"\x00" + nonce, digest_size=16, key=self._salt
        ).digest()

    def _bloom(self, gen: int) -> BloomFilter:
        bloom = self._gens.get(gen)
        if bloom is None:
            bloom = self._gens[gen] = BloomFilter(self._bloom_bits)
        return bloom

    def _check_nonce(self, sender: str, ts_ms: int, nonce: bytes) -> Verdict:
        gen = ts_ms // self.gen_ms
        digest = self._digest(sender, nonce)
        item = (gen, digest)
        if self._bloom(gen).add(digest):
            if item in self._pending or self._stored(gen, digest):
                return _REPLAY
            self.false_positives += 1
        self._pending.add(item)
        return _ACCEPT

    def _stored(self, gen: int, digest: bytes) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM nonces WHERE gen = ? AND digest = ?", (gen, digest)
        ).fetchone()
        return row is not None

    def _expire(self, now_ms: int) -> None:
        """Forget what the clock window already refuses: old generations, idle epochs."""
        horizon = now_ms - 2 * self.window_ms
        old_gens = [g for g in self._gens if (g + 1) * self.gen_ms < horizon]
        for g in old_gens:
            del self._gens[g]
        old_counters = [k for k, st in self._counters.items() if st[2] < horizon]
        for k in old_counters:
            del self._counters[k]
            self._dirty.discard(k)
        if old_gens or old_counters:
            self._pending = {p for p in self._pending if p[0] not in old_gens}
            with self._db:
                self._db.execute(
                    "DELETE FROM nonces WHERE gen < ?", ((horizon // self.gen_ms) - 1,)
                )
                self._db.executemany(
                    "DELETE FROM counters WHERE sender = ? AND epoch = ?", old_counters
                )
        self._next_expiry = now_ms + self.gen_ms // 4

    # -- retained messages --------------------------------------------------------------
    def admit_version(self, scope: str, version: int) -> bool:
        """Retained messages: True (and remembered) only if ``version`` is newer for ``scope``."""
        with self._lock:
            row = self._db.execute(
                "SELECT version FROM versions WHERE scope = ?", (scope,)
            ).fetchone()
            if row is not None and row[0] >= version:
                return False
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?)", (scope, version))
            return True

    def memory_bytes(self) -> int:
        """Bytes held by the Bloom generations (the resident part that grows with nonces)."""
        return sum(b.size_bytes for b in self._gens.values())
