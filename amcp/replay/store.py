"""The exact nonce store: 16-byte records on disk, appended in partitioned runs.

Why not one row per nonce: a B-tree keyed by random digests dirties nearly every leaf page on
each batch, so every flush rewrites most of the table (measured 4-9 us per row on the target
machines, more than the whole replay budget). Here a flush appends, per Bloom generation, one
row per *partition* (the record's partition byte): 8,192 nonces become at most 256 small
sequential rows. The store is read only on a Bloom hit: a lookup fetches the few rows of one
partition and searches them in C (``bytes.find``, kept to 16-byte boundaries). Once a partition
holds ``MERGE_AT`` rows they are merged into one, so a lookup reads a bounded number of rows
while the total rewriting stays small (a merge touches 1/256 of a generation).

The store never commits: the guard wraps each flush (counters and nonces) in one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

RECORD_BYTES = 16
PARTS = 256
MERGE_AT = 8
"""Rows per partition that trigger a merge into one row."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS nonce_runs (
    gen INTEGER NOT NULL, part INTEGER NOT NULL, seq INTEGER NOT NULL,
    records BLOB NOT NULL, PRIMARY KEY (gen, part, seq)
) WITHOUT ROWID;
"""

Run = tuple[int, int, bytes]
"""``(generation, partition, concatenated 16-byte records)``."""


def find_record(blob: bytes | bytearray, record: bytes) -> bool:
    """True if ``record`` is one of the 16-byte records of ``blob`` (not a straddling match)."""
    i = blob.find(record)
    while i >= 0:
        if i % RECORD_BYTES == 0:
            return True
        i = blob.find(record, i + 1)
    return False


class NonceStore:
    """Append-only partitioned runs of records, per generation, in an open SQLite database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db  # with :data:`SCHEMA` in it (the guard's file migrates to it)
        self._rows: dict[tuple[int, int], int] = {}
        for gen, part, n in db.execute(
            "SELECT gen, part, count(*) FROM nonce_runs GROUP BY gen, part"
        ):
            self._rows[gen, part] = n
        row = db.execute("SELECT max(seq) FROM nonce_runs").fetchone()
        self._seq = (row[0] or 0) + 1

    def runs(self) -> Iterator[tuple[int, bytes]]:
        """Every stored ``(generation, records)`` run: for rebuilding the Bloom filters."""
        yield from self._db.execute("SELECT gen, records FROM nonce_runs")

    def contains(self, gen: int, part: int, record: bytes) -> bool:
        rows = self._db.execute(
            "SELECT records FROM nonce_runs WHERE gen = ? AND part = ?", (gen, part)
        )
        return any(find_record(blob, record) for (blob,) in rows)

    def append(self, runs: list[Run]) -> None:
        """Store one flush's runs (the caller's transaction commits)."""
        if not runs:
            return
        seq = self._seq
        self._seq += 1
        self._db.executemany(
            "INSERT INTO nonce_runs VALUES (?,?,?,?)", [(g, p, seq, r) for g, p, r in runs]
        )
        counts = self._rows
        for gen, part, _ in runs:
            n_rows = counts.get((gen, part), 0) + 1
            counts[gen, part] = n_rows
            if n_rows >= MERGE_AT:
                self._merge(gen, part)

    def _merge(self, gen: int, part: int) -> None:
        db = self._db
        where = (gen, part)
        blobs = [
            b
            for (b,) in db.execute(
                "SELECT records FROM nonce_runs WHERE gen = ? AND part = ? ORDER BY seq", where
            )
        ]
        db.execute("DELETE FROM nonce_runs WHERE gen = ? AND part = ?", where)
        db.execute(
            "INSERT INTO nonce_runs VALUES (?,?,?,?)", (gen, part, self._seq, b"".join(blobs))
        )
        self._seq += 1
        self._rows[where] = 1

    def drop_before(self, gen: int) -> None:
        """Forget generations below ``gen`` (the clock window refuses anything they hold)."""
        self._db.execute("DELETE FROM nonce_runs WHERE gen < ?", (gen,))
        self._rows = {k: v for k, v in self._rows.items() if k[0] >= gen}
