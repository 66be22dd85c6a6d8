"""Per-peer watermarks, peer expiry and tombstone collection.

Two watermarks per peer, both only ever moving forward:

- ``acked``: the highest of *our* versions the peer confirmed it committed. Deltas for the
  peer start there, and a tombstone may be collected once every live peer acked past it.
- ``received``: the highest of *the peer's* versions we committed (recorded in the same
  transaction as the rows), sent in our hello so the peer resumes where we stopped.

A peer silent for longer than the horizon expires: its entry is deleted, so it no longer
holds tombstones back, and when it returns it says hello as a stranger and is resynced in
full. As with Cassandra's ``gc_grace_seconds``, a peer that returns after the horizon may
still hold a value whose deletion was already collected here; the horizon is chosen longer
than any expected outage for that reason.
"""

from __future__ import annotations

import sqlite3

import msgspec

from amcp.store.errors import UnknownPeerError


class PeerState(msgspec.Struct, frozen=True):
    peer: str
    database_id: str
    acked: int
    received: int
    last_seen_ms: int
    reset: bool = False
    """True when this hello found a new database id (or a new peer): resync in full."""


_COLUMNS = "peer, database_id, acked, received, last_seen_ms"


def get(conn: sqlite3.Connection, peer: str) -> PeerState | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM peers WHERE peer=?", (peer,)).fetchone()  # noqa: S608
    return None if row is None else PeerState(*row)


def all_peers(conn: sqlite3.Connection) -> list[PeerState]:
    return [PeerState(*r) for r in conn.execute(f"SELECT {_COLUMNS} FROM peers ORDER BY peer")]  # noqa: S608


def hello(conn: sqlite3.Connection, peer: str, database_id: str, now_ms: int) -> PeerState:
    """Record a peer's hello; a new or changed database id resets both watermarks."""
    old = get(conn, peer)
    if old is None or old.database_id != database_id:
        conn.execute(
            "INSERT INTO peers(peer, database_id, acked, received, last_seen_ms) "
            "VALUES (?, ?, 0, 0, ?) ON CONFLICT(peer) DO UPDATE SET "
            "database_id=excluded.database_id, acked=0, received=0, last_seen_ms=?",
            (peer, database_id, now_ms, now_ms),
        )
        return PeerState(peer, database_id, 0, 0, now_ms, reset=True)
    conn.execute("UPDATE peers SET last_seen_ms=? WHERE peer=?", (now_ms, peer))
    return PeerState(peer, database_id, old.acked, old.received, now_ms)


def ack(conn: sqlite3.Connection, peer: str, version: int, now_ms: int) -> None:
    cur = conn.execute(
        "UPDATE peers SET acked=max(acked, ?), last_seen_ms=? WHERE peer=?",
        (version, now_ms, peer),
    )
    if cur.rowcount == 0:
        raise UnknownPeerError(peer)


def received(conn: sqlite3.Connection, peer: str, version: int, now_ms: int) -> None:
    cur = conn.execute(
        "UPDATE peers SET received=max(received, ?), last_seen_ms=? WHERE peer=?",
        (version, now_ms, peer),
    )
    if cur.rowcount == 0:
        raise UnknownPeerError(peer)


def expire(conn: sqlite3.Connection, now_ms: int, horizon_ms: int) -> list[str]:
    gone = [
        r[0]
        for r in conn.execute(
            "SELECT peer FROM peers WHERE last_seen_ms < ? ORDER BY peer", (now_ms - horizon_ms,)
        )
    ]
    conn.executemany("DELETE FROM peers WHERE peer=?", [(p,) for p in gone])
    return gone


def collect_tombstones(conn: sqlite3.Connection) -> int:
    """Delete tombstones every live peer acknowledged; with no peers known, keep them all.

    Keeping them when no peer is known is the safe side: a gateway that has not met the
    cloud yet must still tell it about its deletes.
    """
    floor = conn.execute("SELECT min(acked) FROM peers").fetchone()[0]
    if floor is None:
        return 0
    cur = conn.execute("DELETE FROM map WHERE value IS NULL AND version <= ?", (floor,))
    return cur.rowcount
