"""Replay defence for authenticated envelopes, persisted in SQLite so it survives restarts.

Call :meth:`ReplayGuard.check` (or :meth:`ReplayGuard.check_many`) only after the signature
verified: it records what it accepts.

- **Counter senders** (the main path): per (sender, epoch) the highest counter seen and a
  sliding bitmap of the ``counter_window`` counters below it (RFC 6479 style). Exact and tiny.
- **Nonce senders**: a Bloom filter per generation of envelope *timestamps* (a replay carries
  the same signed timestamp, so it lands in the same generation). A Bloom hit is confirmed
  exactly: first in the generation's in-memory buffer of not yet persisted records, then in
  the on-disk store (:mod:`amcp.replay.store`), which is read only on a hit. A false positive
  is counted and the message accepted. Generations older than the clock window are dropped:
  anything they could match is already refused as stale.

The record of a (sender, nonce) is ``((N ^ S) * M) mod 2**128``: ``N`` the 16-byte nonce as a
little-endian integer (other lengths are first folded with keyed BLAKE2b), ``S`` a per-sender
key (keyed BLAKE2b of the key id), ``M`` an odd multiplier; ``S`` and ``M`` derive from a random
salt kept in the store, so records and Bloom positions are stable across restarts (filters are
rebuilt from the stored records). Why this and not BLAKE2b per check (2-3x the cost):

- *Exact per sender*: XOR with a constant and multiplication by an odd number modulo 2**128
  are bijections, so one sender's records never collide. Two senders' records collide only if
  their nonces differ by exactly ``S1 ^ S2``, a secret: 2**-128 for honest random nonces, and
  not aimable by a sender holding a valid key.
- *Unpredictable positions*: Bloom bits and the store partition come from the top 96 bits of
  the product (multiply-shift hashing, whose high bits depend on every input bit; for inputs
  chosen without knowing ``M`` they collide about as often as random bits). Taking nonce bytes
  as they are, or XOR alone, would let a sender that chooses its nonces land them all on the
  same bits and partition.
- What it does not resist is an adversary that reads the state file or measures, over many
  messages, which nonces are slow; that buys only extra store lookups (slower checks): never a
  false reject (records are exact) nor an accepted replay (every hit is confirmed exactly,
  every accepted record is kept).

Writes are batched (every ``flush_every`` accepted checks, on :meth:`flush` and :meth:`close`):
until a flush the Bloom filter plus the buffer answer "seen" exactly, and a flush appends a few
hundred rows however many nonces it holds. If the process dies before a
flush, the next open finds the store marked unclean and refuses every envelope stamped before
that restart: state that may be missing can never admit a replay.
Thread-safe: one lock around each check or batch (SQLite runs under it, so from async code
call the opener in a worker thread). The file is an :class:`~amcp.runtime.database.Database`
used from the caller's thread (no writer thread: the hot path never queues), with the project's
pragmas and numbered migrations; :meth:`ReplayGuard.close` then :meth:`ReplayGuard.open` reopen
the same guard.
"""

from __future__ import annotations

import enum
import hashlib
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, Self

from amcp.replay.bloom import BloomFilter
from amcp.replay.store import PARTS, RECORD_BYTES, NonceStore, Run, find_record
from amcp.replay.store import SCHEMA as NONCE_SCHEMA
from amcp.runtime.database import Database, Schema
from amcp.runtime.storage import StorageFullError, transaction

_V1 = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    sender TEXT NOT NULL, epoch INTEGER NOT NULL, top INTEGER NOT NULL,
    bitmap BLOB NOT NULL, last_ts INTEGER NOT NULL, PRIMARY KEY (sender, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    scope TEXT PRIMARY KEY, version INTEGER NOT NULL
) WITHOUT ROWID;
"""
SCHEMA = Schema("replay", (_V1 + NONCE_SCHEMA,))
"""Numbered steps, forward only. Files from before ``user_version`` are at 0 and have these
tables already (step 1 creates what they lack); one from before partitioned runs still has a
``nonces`` table, which :meth:`ReplayGuard.open` drops (and refuses what it covered)."""

_MAX_SENDERS = 65536
"""Cached per-sender keys (senders are key ids that verified, so few in practice)."""
NONCE_BYTES = 16
_MASK128 = (1 << 128) - 1

Check = tuple[str, int, bytes, int | None, int | None]
"""``(sender, ts_ms, nonce, epoch, counter)``: one item for :meth:`ReplayGuard.check_many`."""


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
_BEFORE = Verdict.BEFORE_RESTART


class Generation(BloomFilter):
    """One generation's Bloom filter and its not yet persisted records, by store partition.

    The buffer answers "seen" exactly for what the store does not hold yet: a Bloom hit looks
    in the hit's partition buffer (a few hundred bytes, searched in C) before the disk.
    """

    __slots__ = ("parts",)

    def __init__(self, m_bits: int) -> None:
        super().__init__(m_bits)
        self.parts = [bytearray() for _ in range(PARTS)]


class ReplayGuard:
    def __init__(
        self,
        path: Path | str | None = None,
        *,
        window_s: float = 90.0,
        counter_window: int = 1024,
        expected_nonces: int = 100_000,
        bloom_bits: int | None = None,
        flush_every: int = 65536,
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
        self._file = Database(path, name="replay", schema=SCHEMA, synchronous="NORMAL")
        self.false_positives = 0
        self.deferred_flushes = 0
        """Writes put off because the disk was full (the state stays in memory meanwhile)."""
        self.open()

    def open(self) -> None:
        """Load the state from the file (opened on this thread: the guard is synchronous and
        runs under its lock). The constructor opens; after :meth:`close` this opens the same
        guard again, with what the file holds."""
        with self._lock:
            if self._file.is_open:
                return
            self._db = self._file.open_sync()
            try:
                self._store = NonceStore(self._db)
                self._counters: dict[tuple[str, int], list[int]] = {}
                self._dirty: set[tuple[str, int]] = set()
                self._gens: dict[int, Generation] = {}
                self._sender_keys: dict[str, int] = {}
                self._next_expiry = 0
                self._unflushed = 0
                self.floor_ms = 0
                self._load()
            except BaseException:
                self._file.close_sync()
                raise
            # the containers are only ever changed in place: bind them once for the hot loop
            self._hot = (
                self._counters,
                self._dirty.add,
                self._counter_window,
                self._counter_mask,
                self._gens,
                self._sender_keys,
                self._mul,
                self.gen_ms,
                self._store,
            )

    # -- persistence ------------------------------------------------------------------
    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _set_meta(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _load(self) -> None:
        with transaction(self._db):
            salt = self._meta("salt")
            if salt is None:
                salt = os.urandom(16)
                self._set_meta("salt", salt)
            if self._meta("clean") == b"0":
                self.floor_ms = int(self._clock.time() * 1000) + 1  # refuse up to restart
            self._set_meta("clean", b"0")
        self._salt = salt
        # odd multiplier of the multiply-shift hash: a bijection on 128 bits, secret per store
        mul = hashlib.blake2b(b"multiplier", digest_size=16, key=salt).digest()
        self._mul = int.from_bytes(mul, "little") | 1
        for sender, epoch, top, bitmap, last_ts in self._db.execute("SELECT * FROM counters"):
            self._counters[sender, epoch] = [top, int.from_bytes(bitmap, "big"), last_ts]
        self._drop_row_per_nonce_table()
        for gen, records in self._store.runs():
            g = self._generation(gen)
            for i in range(0, len(records), RECORD_BYTES):
                g.add(int.from_bytes(records[i : i + RECORD_BYTES], "little"))

    def _drop_row_per_nonce_table(self) -> None:
        """Stores from before partitioned runs kept BLAKE2b digests one row per nonce, which
        the current hash cannot be checked against: refuse what they covered, like a crash."""
        db = self._db
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'nonces'").fetchone() is None:
            return
        self.floor_ms = int(self._clock.time() * 1000) + 1
        with transaction(db):
            db.execute("DROP TABLE nonces")

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
        runs = self._take_runs()
        try:
            with transaction(self._db):
                self._db.executemany("INSERT OR REPLACE INTO counters VALUES (?,?,?,?,?)", rows)
                self._store.append(runs)
        except StorageFullError:
            # a full disk: the records go back to their buffers (they are what confirms a
            # Bloom hit exactly, so dropping them would admit a replay) and wait for the
            # next flush; until then memory answers as before
            for gen, part, records in runs:
                if (g := self._gens.get(gen)) is not None:
                    g.parts[part][:0] = records
            self.deferred_flushes += 1
            return
        self._dirty.clear()
        self._unflushed = 0

    def _take_runs(self) -> list[Run]:
        runs: list[Run] = []
        for gen, g in self._gens.items():
            for part, buf in enumerate(g.parts):
                if buf:
                    runs.append((gen, part, bytes(buf)))
                    buf.clear()
        return runs

    def close(self) -> None:
        """Flush and mark the store clean, so the next open trusts it fully (:meth:`open`
        opens the same guard again)."""
        with self._lock:
            if not self._file.is_open:
                return
            try:
                self._flush()
                with transaction(self._db):
                    self._set_meta("clean", b"1")
            finally:
                self._file.close_sync()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks -----------------------------------------------------------------------
    def check(  # noqa: PLR0917 - mirrors the header fields, called per envelope
        self,
        sender: str,
        ts_ms: int,
        nonce: bytes,
        epoch: int | None,
        counter: int | None,
        now_ms: int,
    ) -> Verdict:
        """Accept and record, or say why not. ``sender`` is the key id that signed."""
        with self._lock:
            return self._run(((sender, ts_ms, nonce, epoch, counter),), now_ms)[0]

    def check_many(self, items: Iterable[Check], now_ms: int) -> list[Verdict]:
        """:meth:`check` for a batch of verified envelopes, in order, under one lock.

        Same verdicts as calling :meth:`check` for each item in turn (a replay inside the
        batch is caught too); cheaper per item when envelopes arrive in bursts.
        """
        with self._lock:
            return self._run(items, now_ms)

    def _run(self, items: Iterable[Check], now_ms: int) -> list[Verdict]:  # noqa: C901, PLR0912, PLR0915
        """The one implementation of both paths, inlined: it runs for every envelope, and
        attribute and call overhead is most of its cost in CPython (benchmark target)."""
        if now_ms >= self._next_expiry:
            self._expire(now_ms)
        out: list[Verdict] = []
        append = out.append
        floor = self.floor_ms
        unflushed = self._unflushed
        (counters, mark_dirty, window, window_mask, gens, sender_keys, mul, gen_ms, store) = (
            self._hot
        )
        flush_every = self._flush_every
        for sender, ts_ms, nonce, epoch, counter in items:
            if ts_ms < floor:
                append(_BEFORE)
                continue
            if counter is None or epoch is None:
                # nonce path: keyed hash -> Bloom generation -> exact confirmation on a hit
                skey = sender_keys.get(sender)
                if skey is None:
                    skey = self._sender_key(sender)
                raw = nonce if len(nonce) == NONCE_BYTES else self._fold(nonce)
                h = ((int.from_bytes(raw, "little") ^ skey) * mul) & _MASK128
                gen = ts_ms // gen_ms
                g = gens.get(gen)
                if g is None:
                    g = self._generation(gen)
                bits = g.bits
                m = g.mask
                a = (h >> 96) & m
                b = (h >> 64) & m
                c = (h >> 32) & m
                ia, ib, ic = a >> 3, b >> 3, c >> 3
                ba, bb, bc = 1 << (a & 7), 1 << (b & 7), 1 << (c & 7)
                part = h >> 120
                record = h.to_bytes(RECORD_BYTES, "little")
                if bits[ia] & ba and bits[ib] & bb and bits[ic] & bc:
                    # a hit is only "maybe": confirm it exactly before calling it a replay
                    if find_record(g.parts[part], record) or store.contains(gen, part, record):
                        append(_REPLAY)
                        continue
                    self.false_positives += 1
                else:
                    bits[ia] |= ba
                    bits[ib] |= bb
                    bits[ic] |= bc
                g.parts[part] += record
            else:
                key = (sender, epoch)
                state = counters.get(key)
                if state is None:
                    counters[key] = [counter, 1, ts_ms]
                else:
                    top = state[0]
                    if counter > top:
                        state[1] = ((state[1] << (counter - top)) | 1) & window_mask
                        state[0] = counter
                    else:
                        behind = top - counter
                        if behind >= window:
                            append(_BELOW)
                            continue
                        bit = 1 << behind
                        if state[1] & bit:
                            append(_REPLAY)
                            continue
                        state[1] |= bit
                    if ts_ms > state[2]:  # noqa: PLR1730 - max() is a call, measurably slower
                        state[2] = ts_ms
                mark_dirty(key)
            append(_ACCEPT)
            unflushed += 1
            if unflushed >= flush_every:
                self._flush()
                unflushed = 0
        self._unflushed = unflushed
        return out

    def _sender_key(self, sender: str) -> int:
        """The sender's 128-bit XOR key: records of two senders collide only if their nonces
        differ by exactly the XOR of two secret keys."""
        if len(self._sender_keys) >= _MAX_SENDERS:
            self._sender_keys.clear()
        digest = hashlib.blake2b(sender.encode(), digest_size=16, key=self._salt).digest()
        key = self._sender_keys[sender] = int.from_bytes(digest, "little")
        return key

    def _fold(self, nonce: bytes) -> bytes:
        """Nonces of another length than 16 bytes (foreign clients) are hashed to 16 first."""
        return hashlib.blake2b(nonce, digest_size=16, key=self._salt, person=b"amcp-nonce").digest()

    def _generation(self, gen: int) -> Generation:
        g = self._gens.get(gen)
        if g is None:
            g = self._gens[gen] = Generation(self._bloom_bits)
        return g

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
            try:
                with transaction(self._db):
                    self._store.drop_before((horizon // self.gen_ms) - 1)
                    self._db.executemany(
                        "DELETE FROM counters WHERE sender = ? AND epoch = ?", old_counters
                    )
            except StorageFullError:
                self.deferred_flushes += 1  # stale rows stay on disk until the next expiry
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
            with transaction(self._db):
                self._db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?)", (scope, version))
            return True

    def memory_bytes(self) -> int:
        """Bytes held by the Bloom generations (the resident part that grows with nonces)."""
        return sum(b.size_bytes for b in self._gens.values())
