"""The cloud's own audit chain: what the cloud decides and writes, hash-linked like a
gateway's chain and logged in the same Merkle log (docs/audit.md, "The cloud's entries").

:class:`CloudTrail` appends entries with the cloud's id as their source straight into the
audit inbox, in the format gateways ship (:class:`amcp.audit.chain.Entry`, msgpack), so the
audit log (``cloud.audit``) checks and logs them exactly as it does a gateway's, and
``cybernetic audit verify`` checks the cloud's chain with the others. An entry is committed
when :meth:`CloudTrail.append` returns, before the action it records is reported done.

Who acted is :data:`actor`, a context variable: ``operator`` for the control socket (the
command line on the cloud's host), set per request by callers that know better (the API sets
the token's or user's name). Recorded today: fleet rows written through
:class:`~cloud.authoring.Authoring` (limits, desired twins, patterns, zones: ``fleet.*``),
signed policy bundles written (``policy.pushed``, with the bundle's cause), mitigations
proposed by S4 (``s4.mitigation.proposed``) and CRDT snapshots (``crdt.snapshot``).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from amcp.audit.chain import GENESIS, Entry, entry_hash, payload_digest
from cloud.storage.engine import Engine, Tx

actor: contextvars.ContextVar[str] = contextvars.ContextVar("audit_actor", default="operator")
"""Who is acting, for entries appended in this context."""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Entry).decode
Item = tuple[str, str, Mapping[str, Any], str]
"""(kind, subject, payload, causation)."""


def _last(tx: Tx, source: str) -> tuple[int, bytes]:
    rows = tx.execute(
        "SELECT entry FROM audit_inbox WHERE source = ? ORDER BY seq DESC LIMIT 1", (source,)
    )
    logged = tx.execute(
        "SELECT seq, hash FROM audit_events WHERE source = ? ORDER BY seq DESC LIMIT 1",
        (source,),
    )
    best = (int(logged[0][0]), bytes(logged[0][1])) if logged else (0, GENESIS)
    if rows:
        entry = _decode(bytes(rows[0][0]))
        if entry.seq > best[0]:
            best = (entry.seq, entry_hash(entry))
    return best


class CloudTrail:
    def __init__(
        self, engine: Engine, source: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.source = source
        self.clock = clock
        self.appended = 0
        self._lock = asyncio.Lock()  # one appender: seq and prev follow each other

    async def append(
        self, kind: str, subject: str, payload: Mapping[str, Any], causation: str = ""
    ) -> Entry:
        (entry,) = await self.append_many([(kind, subject, payload, causation)])
        return entry

    async def append_many(
        self,
        items: list[Item],
        *,
        also: Callable[[Tx], None] | None = None,
        by: str | None = None,
    ) -> list[Entry]:
        """Several entries in one transaction, durable when this returns; ``also`` writes
        what they record in the same transaction (both or neither); ``by``: the actor, when
        not :data:`actor` (a part of the cloud acting on its own: ``s4``, ``snapshots``)."""
        if not items:
            return []
        who = by or actor.get()
        now = int(self.clock() * 1000)

        def write(tx: Tx) -> list[Entry]:
            if also is not None:
                also(tx)
            seq, prev = _last(tx, self.source)
            out = []
            for kind, subject, payload, causation in items:
                seq += 1
                body = msgspec.json.decode(msgspec.json.encode(payload))  # as the inbox holds it
                entry = Entry(
                    self.source,
                    seq,
                    now,
                    kind,
                    who,
                    subject,
                    payload_digest(body),
                    causation,
                    prev,
                )
                prev = entry_hash(entry)
                tx.execute(
                    "INSERT INTO audit_inbox (source, seq, entry, payload, received_ms) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (self.source, seq, _encode(entry), msgspec.json.encode(body).decode(), now),
                )
                out.append(entry)
            return out

        async with self._lock:
            entries = await self.engine.write(write)
        self.appended += len(entries)
        return entries
