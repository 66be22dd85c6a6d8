"""Schema, migrations and connection set-up for the store's SQLite file.

``PRAGMA user_version`` holds the schema version. Each entry of :data:`MIGRATIONS` moves a
database one version forward inside one transaction, so a crash mid-upgrade leaves the old
version intact. A database newer than :data:`SCHEMA_VERSION` is refused with
:class:`SchemaTooNewError`: an older binary cannot know what the newer columns mean.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from amcp.runtime.storage import transaction
from amcp.store.errors import SchemaTooNewError, SiteMismatchError

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the LWW map, immutable chunks of large values, manifests waiting for their
    # chunks, per-peer watermarks and the database's identity.
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
    CREATE TABLE map (
        ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB, hlc INTEGER NOT NULL,
        site TEXT NOT NULL, chunks INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL,
        PRIMARY KEY (ns, key)
    );
    CREATE UNIQUE INDEX map_version ON map (version);
    CREATE TABLE chunks (
        ns TEXT NOT NULL, key TEXT NOT NULL, hlc INTEGER NOT NULL, site TEXT NOT NULL,
        idx INTEGER NOT NULL, data BLOB NOT NULL, version INTEGER NOT NULL,
        PRIMARY KEY (ns, key, hlc, site, idx)
    );
    CREATE UNIQUE INDEX chunks_version ON chunks (version);
    CREATE TABLE pending (
        ns TEXT NOT NULL, key TEXT NOT NULL, hlc INTEGER NOT NULL, site TEXT NOT NULL,
        value BLOB NOT NULL, chunks INTEGER NOT NULL,
        PRIMARY KEY (ns, key, hlc, site)
    ) WITHOUT ROWID;
    CREATE TABLE peers (
        peer TEXT PRIMARY KEY, database_id TEXT NOT NULL, acked INTEGER NOT NULL DEFAULT 0,
        received INTEGER NOT NULL DEFAULT 0, last_seen_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 1 -> 2: the map clustered on its key (WITHOUT ROWID): a merge updates two b-trees instead
    # of three, about a quarter more rows merged per second (measured, docs/store.md).
    """
    CREATE TABLE map_v2 (
        ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB, hlc INTEGER NOT NULL,
        site TEXT NOT NULL, chunks INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL,
        PRIMARY KEY (ns, key)
    ) WITHOUT ROWID;
    INSERT INTO map_v2 SELECT ns, key, value, hlc, site, chunks, version FROM map;
    DROP TABLE map;
    ALTER TABLE map_v2 RENAME TO map;
    CREATE UNIQUE INDEX map_version ON map (version);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(
    path: str | Path, *, synchronous: str = "NORMAL", readonly: bool = False
) -> sqlite3.Connection:
    """Open a connection in WAL mode with explicit transactions (``isolation_level=None``).

    ``synchronous=NORMAL`` in WAL mode keeps the database consistent after a power cut but
    may lose the last transactions committed before it; merged rows are re-sent by the peer
    because watermarks live in the same transactions. ``FULL`` makes every commit durable.
    """
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={_checked_sync(synchronous)}")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA cache_size=-32768")
    return conn


def _checked_sync(level: str) -> str:
    upper = level.upper()
    if upper not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"unknown synchronous level {level!r}")
    return upper


def migrate(conn: sqlite3.Connection, path: str | Path) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; return the version it was at."""
    found: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise SchemaTooNewError(str(path), found, SCHEMA_VERSION)
    for version in range(found, SCHEMA_VERSION):
        with transaction(conn):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version + 1}")
    return found


def identity(conn: sqlite3.Connection, path: str | Path, site: str) -> tuple[str, int, int]:
    """Return (database id, version counter, last HLC), creating them on first open.

    The database id is random per file: a peer that sees a new id for a known site knows the
    database was wiped or replaced and resyncs it fully.
    """
    with transaction(conn):
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        if not meta:
            meta = {"database_id": uuid.uuid4().hex, "site": site, "version": 0, "hlc": 0}
            conn.executemany("INSERT INTO meta(name, value) VALUES (?, ?)", meta.items())
    if meta["site"] != site:
        raise SiteMismatchError(str(path), str(meta["site"]), site)
    return str(meta["database_id"]), int(meta["version"]), int(meta["hlc"])
