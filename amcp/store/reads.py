"""Read queries over a store connection, usable from the writer's or any reader's connection.

Each function that runs more than one statement does so in one read transaction, so it
sees one snapshot (WAL): a chunked value is read with the manifest that names its chunks,
and a change set's version matches the rows it lists.
"""

from __future__ import annotations

import hashlib
import sqlite3

import msgspec

from amcp.runtime.database import snapshot
from amcp.store.errors import InvalidRowError
from amcp.store.rows import ChangeSet, Chunk, Row, chunk_size, row_size


class Entry(msgspec.Struct, frozen=True):
    """A live value with the clock that wrote it."""

    namespace: str
    key: str
    value: bytes
    hlc: int
    site: str


def assemble(conn: sqlite3.Connection, row: Row) -> bytes:
    """The full value of a live map row, joining its chunks when it has any."""
    value = row.value or b""
    if row.chunks == 0:
        return value
    parts = conn.execute(
        "SELECT data FROM chunks WHERE ns=? AND key=? AND hlc=? AND site=? ORDER BY idx",
        (row.namespace, row.key, row.hlc, row.site),
    ).fetchall()
    data = b"".join(p[0] for p in parts)
    if len(parts) != row.chunks or hashlib.sha256(data).digest() != value:
        reason = f"chunked value incomplete or corrupt ({len(parts)}/{row.chunks} chunks)"
        raise InvalidRowError(row.namespace, row.key, reason)
    return data


def get_entry(conn: sqlite3.Connection, ns: str, key: str) -> Entry | None:
    with snapshot(conn):
        row = conn.execute(
            "SELECT value, hlc, site, chunks FROM map WHERE ns=? AND key=?", (ns, key)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        value = assemble(conn, Row(ns, key, row[0], row[1], row[2], row[3]))
        return Entry(ns, key, value, row[1], row[2])


def get(conn: sqlite3.Connection, ns: str, key: str) -> bytes | None:
    entry = get_entry(conn, ns, key)
    return None if entry is None else entry.value


def items(conn: sqlite3.Connection, ns: str, prefix: str = "") -> dict[str, bytes]:
    """Live (non-deleted) values of a namespace whose keys start with ``prefix``."""
    sql = "SELECT key, value, hlc, site, chunks FROM map WHERE ns=? AND value IS NOT NULL"
    params: tuple[str | int, ...] = (ns,)
    if prefix:
        sql += " AND key >= ? AND substr(key, 1, ?) = ?"
        params = (ns, prefix, len(prefix), prefix)
    with snapshot(conn):
        rows = conn.execute(sql + " ORDER BY key", params).fetchall()
        return {k: assemble(conn, Row(ns, k, v, h, s, c)) for k, v, h, s, c in rows}


def namespaces(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT ns FROM map ORDER BY ns")]


def canonical_dump(conn: sqlite3.Connection) -> bytes:
    """Every row, tombstones included, in key order: replicas that converged dump equal bytes.

    Chunked values are dumped whole, so replicas compare on values, not on chunking.
    """
    with snapshot(conn):
        rows = conn.execute(
            "SELECT ns, key, value, hlc, site, chunks FROM map ORDER BY ns, key"
        ).fetchall()
        out = [
            Row(ns, key, None if v is None else assemble(conn, Row(ns, key, v, h, s, c)), h, s)
            for ns, key, v, h, s, c in rows
        ]
    return msgspec.msgpack.encode(out)


def current_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE name='version'").fetchone()[0])


def changes_since(
    conn: sqlite3.Connection,
    version: int,
    limit_bytes: int = 96 * 1024,
    *,
    exclude_site: str | None = None,
) -> ChangeSet:
    """Rows and chunks changed after ``version``, in version order, up to ``limit_bytes``.

    A row overwritten since is listed once with its newest value: deltas never carry history.
    The first item is always included, so a batch always makes progress. Rows written by
    ``exclude_site`` are skipped (the peer has them); the returned version still moves past
    them. Chunks come before the manifest row that names them (lower versions).
    """
    with snapshot(conn):
        top = current_version(conn)
        page = max(16, limit_bytes // 24 + 1)
        map_rows = conn.execute(
            "SELECT version, ns, key, value, hlc, site, chunks FROM map WHERE version > ? "
            "ORDER BY version LIMIT ?",
            (version, page),
        ).fetchall()
        chunk_rows = conn.execute(
            "SELECT version, ns, key, hlc, site, idx, data FROM chunks WHERE version > ? "
            "ORDER BY version LIMIT ?",
            (version, max(2, limit_bytes // 1024 + 1)),
        ).fetchall()
        # Rows past either page's end may not be ordered against the other page: stop there.
        horizon = top
        if len(map_rows) == page:
            horizon = min(horizon, map_rows[-1][0])
        if chunk_rows and len(chunk_rows) == max(2, limit_bytes // 1024 + 1):
            horizon = min(horizon, chunk_rows[-1][0])
        merged = sorted(
            [(r[0], 0, r) for r in map_rows if r[0] <= horizon]
            + [(r[0], 1, r) for r in chunk_rows if r[0] <= horizon]
        )
        rows: list[Row] = []
        chunks: list[Chunk] = []
        used = 0
        reached = version
        for ver, kind, r in merged:
            item: Row | Chunk
            if kind == 0:
                item = Row(r[1], r[2], r[3], r[4], r[5], r[6])
                size = row_size(item)
            else:
                item = Chunk(r[1], r[2], r[3], r[4], r[5], r[6])
                size = chunk_size(item)
            if used and used + size > limit_bytes:
                return ChangeSet(rows, chunks, reached, more=True)
            reached = ver
            if item.site == exclude_site:
                continue
            used += size
            if isinstance(item, Row):
                rows.append(item)
            else:
                chunks.append(item)
        more = horizon < top
        return ChangeSet(rows, chunks, reached if more else top, more=more)
