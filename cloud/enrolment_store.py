"""The enrolment register: one-time bootstrap tokens and enrolled gateways, in SQLite.

Tokens are kept as ``HKDF(token secret)`` (the MAC key) and their public id, never the token
itself. Consumption is one conditional ``UPDATE``, so two requests racing for one token cannot
both win. :class:`cloud.enrolment.Enrolment` answers the requests on top of this store.

The file is an :class:`~amcp.runtime.database.Database` used from the caller's thread (each
statement under the store's lock, ``synchronous=FULL``: a consumed token stays consumed after a
power cut); :meth:`EnrolmentStore.close` and :meth:`EnrolmentStore.open` reopen the same store.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from amcp.runtime.database import Database, Schema
from amcp.wire import enrol as wire

_GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED_IDS = frozenset({"cloud", "gateway", "enrol"})
"""Broker service accounts: a certificate with one of these names would get their ACL."""


def valid_gateway_id(gateway: str, cloud: str) -> bool:
    return bool(_GATEWAY_ID.match(gateway)) and gateway not in RESERVED_IDS | {cloud}


_V1 = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    mac_key BLOB NOT NULL,
    gateway TEXT,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    used_ms INTEGER,
    request_id TEXT,
    response BLOB
);
CREATE TABLE IF NOT EXISTS gateways (
    gateway TEXT PRIMARY KEY,
    node_key BLOB NOT NULL,
    cert_serial TEXT NOT NULL,
    cert_not_after_ms INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    link_ms INTEGER NOT NULL,
    enrolled_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    renew_request_id TEXT,
    renew_response BLOB
);
"""
SCHEMA = Schema("enrolment", (_V1,))
"""Numbered steps, forward only (files from before ``user_version`` have step 1's tables)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class GatewayRecord:
    gateway: str
    node_key: bytes
    cert_serial: str
    cert_not_after_ms: int
    epoch: int
    link_ms: int
    enrolled_ms: int
    revoked_ms: int | None

    @property
    def active(self) -> bool:
        return self.revoked_ms is None


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    gateway: str | None
    created_ms: int
    expires_ms: int
    used_ms: int | None


class EnrolmentStore:
    """Tokens and the gateway register in one SQLite file (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = Database(path, name="enrolment", schema=SCHEMA, synchronous="FULL")
        self._lock = threading.Lock()
        self.open()

    def open(self) -> None:
        """Open the file (the constructor does; after :meth:`close` this opens it again)."""
        with self._lock:
            if not self._file.is_open:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.touch(mode=0o600, exist_ok=True)
                self._db = self._file.open_sync()

    def close(self) -> None:
        with self._lock:
            self._file.close_sync()

    def add_token(self, token: wire.BootstrapToken, gateway: str | None, expires_ms: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens (token_id, mac_key, gateway, created_ms, expires_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (token.token_id, token.mac_key(), gateway, now_ms(), expires_ms),
            )

    def token(self, token_id: str) -> tuple[TokenRecord, bytes, str | None, bytes | None] | None:
        """The token's record, its MAC key, and the request id and response it was used for."""
        with self._lock:
            row = self._db.execute(
                "SELECT token_id, gateway, created_ms, expires_ms, used_ms, mac_key,"
                " request_id, response FROM tokens WHERE token_id = ?",
                (token_id,),
            ).fetchone()
        if row is None:
            return None
        return TokenRecord(*row[:5]), row[5], row[6], row[7]

    def tokens(self) -> list[TokenRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT token_id, gateway, created_ms, expires_ms, used_ms FROM tokens"
                " ORDER BY created_ms"
            ).fetchall()
        return [TokenRecord(*r) for r in rows]

    def consume(self, token_id: str, request_id: str, at_ms: int) -> bool:
        """Mark the token used by ``request_id``; False when it was used or expired meanwhile."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE tokens SET used_ms = ?, request_id = ? WHERE token_id = ?"
                " AND used_ms IS NULL AND expires_ms > ?",
                (at_ms, request_id, token_id, at_ms),
            )
        return cur.rowcount == 1

    def save_response(self, token_id: str, response: bytes) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE tokens SET response = ? WHERE token_id = ?", (response, token_id)
            )

    def gateway(self, gateway: str) -> GatewayRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT gateway, node_key, cert_serial, cert_not_after_ms, epoch, link_ms,"
                " enrolled_ms, revoked_ms FROM gateways WHERE gateway = ?",
                (gateway,),
            ).fetchone()
        return GatewayRecord(*row) if row else None

    def gateways(self) -> list[GatewayRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT gateway, node_key, cert_serial, cert_not_after_ms, epoch, link_ms,"
                " enrolled_ms, revoked_ms FROM gateways ORDER BY gateway"
            ).fetchall()
        return [GatewayRecord(*r) for r in rows]

    def put_gateway(self, rec: GatewayRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO gateways (gateway, node_key, cert_serial,"
                " cert_not_after_ms, epoch, link_ms, enrolled_ms, revoked_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.gateway,
                    rec.node_key,
                    rec.cert_serial,
                    rec.cert_not_after_ms,
                    rec.epoch,
                    rec.link_ms,
                    rec.enrolled_ms,
                    rec.revoked_ms,
                ),
            )

    def renewal(self, gateway: str) -> tuple[str | None, bytes | None]:
        with self._lock:
            row = self._db.execute(
                "SELECT renew_request_id, renew_response FROM gateways WHERE gateway = ?",
                (gateway,),
            ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def save_renewal(self, gateway: str, request_id: str, response: bytes) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE gateways SET renew_request_id = ?, renew_response = ? WHERE gateway = ?",
                (request_id, response, gateway),
            )

    def mark_revoked(self, gateway: str, at_ms: int) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE gateways SET revoked_ms = ? WHERE gateway = ? AND revoked_ms IS NULL",
                (at_ms, gateway),
            )
        return cur.rowcount == 1
