"""Schema, migrations and connection set-up for the store's SQLite file.

The file is an :class:`amcp.runtime.database.Database` like every other: ``PRAGMA
user_version`` holds the schema version, each entry of :data:`MIGRATIONS` moves a database one
version forward inside one transaction (a crash mid-upgrade leaves the old version intact), and
a database newer than :data:`SCHEMA_VERSION` is refused with :class:`SchemaTooNewError`: an
older binary cannot know what the newer columns mean.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from pathlib import Path

from amcp.runtime import database
from amcp.runtime.database import Database, Schema, Synchronous
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
SCHEMA = Schema("store", MIGRATIONS, too_new=SchemaTooNewError)
SCHEMA_VERSION = SCHEMA.version
CACHE_KIB = 32 * 1024
"""Page cache per connection: merges of large batches touch many pages."""


def open_database(
    path: str | Path, *, synchronous: Synchronous = "NORMAL", readers: int = 0
) -> Database:
    """The store's file as a (not yet open) :class:`Database`.

    ``synchronous=NORMAL`` in WAL mode keeps the database consistent after a power cut but
    may lose the last transactions committed before it; merged rows are re-sent by the peer
    because watermarks live in the same transactions. ``FULL`` makes every commit durable.
    """
    return Database(
        Path(path),
        name="store",
        schema=SCHEMA,
        synchronous=synchronous,
        readers=readers,
        cache_kib=CACHE_KIB,
    )


def connect(
    path: str | Path, *, synchronous: str = "NORMAL", readonly: bool = False
) -> sqlite3.Connection:
    """A bare connection with the store's pragmas (the benchmark's reference table)."""
    return database.connect(path, synchronous=synchronous, readonly=readonly, cache_kib=CACHE_KIB)


def migrate(conn: sqlite3.Connection, path: str | Path) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; return the version it was at."""
    return database.migrate(conn, SCHEMA, str(path))


def recorded_site(path: str | Path) -> str | None:
    """The site a store file belongs to (read-only; None when there is no store there)."""
    if not Path(path).exists():
        return None
    with contextlib.closing(database.connect(path, readonly=True)) as conn:
        try:
            row = conn.execute("SELECT value FROM meta WHERE name='site'").fetchone()
        except sqlite3.Error:
            return None
    return None if row is None else str(row[0])


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
