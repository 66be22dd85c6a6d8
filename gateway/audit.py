"""The gateway's audit chain: every control-relevant action, hash-linked in ``audit.sqlite3``.

What is recorded (docs/audit.md): policy bundles applied or refused, policies enforced (the
first reading each rule of a version denies), pattern sets swapped or refused, limit rows
applied or refused, zombies declared and recovered, capabilities reassigned to a standby,
leases granted, refused and expired, desired twin values applied, enrolment and renewals
(``trust.*``), configuration reloads. All but reloads and the enrolment are gateway events
already; :meth:`AuditChain.record_events` is called by the event writer with each batch
*before* the batch goes to the outbox, so the chain holds an action before anything reports it
up. Others are appended where they happen (:meth:`AuditChain.append`).

An append commits with ``synchronous=FULL`` (durable when it returns). The shipper
(:meth:`AuditChain.ship`, a supervised child) puts each entry not yet shipped into the outbox as
an ``audit.entry`` event, so entries travel to the cloud like events (at least once: the cloud
keeps one per (gateway, seq)), and writes the chain's head to the CRDT store
(``audit.heads``/``{gateway}/head``): sequence, hash and time, signed with the gateway's node key
when it is enrolled (the envelope of the sync delta authenticates it in any case).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from amcp.audit.chain import GENESIS, Entry, entry_hash, payload_digest
from amcp.crypto.keys import Signer
from amcp.runtime.database import Database, Schema
from amcp.runtime.supervisor import ChildContext
from amcp.wire.telemetry import EventRecord

log = logging.getLogger(__name__)

AUDITED = (
    "policy.bundle.",
    "policy.enforced",
    "rules.swapped",
    "rules.refused",
    "s1.capability.reassigned",
    "s2.limits",
    "s2.zombie",
    "s2.lease.",
    "trust.",
    "twin.desired.applied",
)
"""Event names (prefixes) the chain records from the event writer's batches (reloads are
appended where they happen: gateway.app, Gateway.reload)."""
ENTRY_EVENT = "audit.entry"

_V1 = """
CREATE TABLE chain (
    seq INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    digest BLOB NOT NULL,
    causation TEXT NOT NULL,
    prev BLOB NOT NULL,
    hash BLOB NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE shipped (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)
"""
SCHEMA = Schema("audit chain", (_V1,))
Sink = Callable[[Sequence[EventRecord]], Awaitable[object]]
_encode = msgspec.msgpack.Encoder().encode


def audited(name: str) -> bool:
    return name.startswith(AUDITED)


def entry_event(entry: Entry, payload: Mapping[str, Any]) -> EventRecord:
    """The event that carries an entry up (its bytes as they are hashed, and its payload)."""
    attrs = {
        "seq": entry.seq,
        "entry": base64.b64encode(_encode(entry)).decode(),
        "payload": dict(payload),
    }
    return EventRecord(ENTRY_EVENT, entry.ts_ms, entry.source, "info", attrs)


class AuditChain:
    def __init__(
        self,
        path: Path,
        source: str,
        *,
        clock: Callable[[], float] = time.time,
        signer: Callable[[], Signer | None] = lambda: None,
    ) -> None:
        self.source = source
        self.clock = clock
        self.signer = signer
        self.db = Database(path, name="audit chain", schema=SCHEMA, synchronous="FULL")
        self._wake = asyncio.Event()
        self.appended = 0

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def held(self) -> None:
        await self.db.held()

    # -- appending ------------------------------------------------------------------------
    async def append(
        self,
        kind: str,
        actor: str,
        subject: str,
        payload: Mapping[str, Any],
        causation: str = "",
    ) -> Entry:
        """One entry, durable when this returns."""
        (entry,) = await self.append_many([(kind, actor, subject, payload, causation)])
        return entry

    async def append_many(
        self, items: Sequence[tuple[str, str, str, Mapping[str, Any], str]]
    ) -> list[Entry]:
        """Several entries in one transaction (one fsync)."""
        if not items:
            return []
        now = int(self.clock() * 1000)
        entries = await self.db.write(lambda db: self._append(db, items, now))
        self.appended += len(entries)
        self._wake.set()
        return entries

    def _append(
        self,
        db: sqlite3.Connection,
        items: Sequence[tuple[str, str, str, Mapping[str, Any], str]],
        now: int,
    ) -> list[Entry]:
        row = db.execute("SELECT seq, hash FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0], row[1]) if row else (0, GENESIS)
        out: list[Entry] = []
        for kind, actor, subject, payload, causation in items:
            seq += 1
            entry = Entry(
                self.source,
                seq,
                now,
                kind,
                actor,
                subject,
                payload_digest(payload),
                causation,
                prev,
            )
            prev = entry_hash(entry)
            db.execute(
                "INSERT INTO chain VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    now,
                    kind,
                    actor,
                    subject,
                    entry.digest,
                    causation,
                    entry.prev,
                    prev,
                    json.dumps(dict(payload), sort_keys=True, default=str),
                ),
            )
            out.append(entry)
        return out

    async def record_events(self, records: Iterable[EventRecord]) -> int:
        """Append the control-relevant ones of a batch of events (before they are written)."""
        items = [
            (
                r.name,
                r.source or "gateway",
                str(r.attrs.get("subject", r.source)),
                _attrs(r),
                str(r.attrs.get("causation", "")),
            )
            for r in records
            if audited(r.name)
        ]
        await self.append_many(items)
        return len(items)

    # -- reading --------------------------------------------------------------------------
    async def last(self, prefix: str) -> dict[str, Any] | None:
        """The payload of the newest entry whose kind starts with ``prefix``."""

        def find(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute(
                "SELECT payload FROM chain WHERE kind >= ? AND kind < ? ORDER BY seq DESC LIMIT 1",
                (prefix, prefix + "\uffff"),
            ).fetchone()
            return json.loads(row[0]) if row else None

        return await self.db.read(find)

    async def entries(
        self, after: int = 0, limit: int = 1000
    ) -> list[tuple[Entry, bytes, dict[str, Any]]]:
        """Entries with ``seq > after``, with their stored hash and payload."""
        return await self.db.read(lambda db: _entries(db, self.source, after, limit))

    async def head(self) -> tuple[int, bytes]:
        row = await self.db.read(
            lambda db: db.execute(
                "SELECT seq, hash FROM chain ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        )
        return (int(row[0]), bytes(row[1])) if row else (0, GENESIS)

    # -- shipping -------------------------------------------------------------------------
    async def ship(
        self,
        ctx: ChildContext,
        sink: Sink,
        put_head: Callable[[dict[str, Any]], Awaitable[object]] | None = None,
    ) -> None:
        """Put entries not yet shipped into the outbox, then the head into the store."""
        ctx.ready()
        while True:
            shipped = await self.db.read(_shipped)
            batch = await self.entries(shipped, 500)
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            await sink([entry_event(e, p) for e, _, p in batch])
            last, head = batch[-1][0].seq, batch[-1][1]
            await self.db.write(functools.partial(_mark_shipped, seq=last))
            if put_head is not None:
                await put_head(self._head_row(last, head))

    def _head_row(self, seq: int, head: bytes) -> dict[str, Any]:
        row: dict[str, Any] = {"seq": seq, "hash": head.hex(), "ts_ms": int(self.clock() * 1000)}
        signer = self.signer()
        if signer is not None:
            signed = f"{self.source}\x00{seq}\x00{head.hex()}".encode()
            row["key_id"] = signer.key_id
            row["signature"] = signer.sign(signed).hex()
        return row


def _attrs(record: EventRecord) -> dict[str, Any]:
    return {"event": record.name, "severity": record.severity, **record.attrs}


def _mark_shipped(db: sqlite3.Connection, *, seq: int) -> None:
    db.execute("INSERT OR REPLACE INTO shipped VALUES (1, ?)", (seq,))


def _shipped(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT seq FROM shipped WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def _entries(
    db: sqlite3.Connection, source: str, after: int, limit: int
) -> list[tuple[Entry, bytes, dict[str, Any]]]:
    rows = db.execute(
        "SELECT seq, ts_ms, kind, actor, subject, digest, causation, prev, hash, payload "
        "FROM chain WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    )
    return [
        (
            Entry(source, seq, ts, kind, actor, subject, bytes(digest), causation, bytes(prev)),
            bytes(h),
            json.loads(payload),
        )
        for seq, ts, kind, actor, subject, digest, causation, prev, h, payload in rows
    ]
