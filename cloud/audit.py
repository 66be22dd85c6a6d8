"""The cloud's audit log: gateway chain entries as leaves of one RFC 9162 Merkle tree.

Cloud ingest keeps each ``audit.entry`` event in ``audit_inbox`` (in the transaction that
stores its batch). :class:`AuditLog` (the ``audit`` child of the cloud that runs every service)
takes them in rounds: per gateway, in sequence order, it checks each entry against the chain so
far (:func:`amcp.audit.chain.check_chain`: a gap, repeat, fork, bad digest or another
gateway's entry is a finding, stored in ``audit_findings`` and logged, and never stops the other
gateways), appends the entries as leaves (``audit_events.leaf``, dense from 0; the leaf data is
the entry's hash), and signs a tree head over the new size (``audit_heads``: size, time, root,
signature with the cloud's audit key). One round is one transaction (group commit).

An entry that arrives after a gap waits in the inbox for ``gap_wait_s`` (the missing one may be
in a batch still on its way); after that the gap is recorded and the chain followed from there.
The tree is kept in memory (:class:`~amcp.audit.merkle.MerkleTree`), built from the stored
leaves at open; proofs come from it (:meth:`AuditLog.inclusion`, :meth:`AuditLog.consistency`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from amcp.audit.chain import ChainState, Entry, Finding, check_chain, entry_hash
from amcp.audit.merkle import MerkleTree, leaf_hash
from amcp.crypto.keys import Signer
from amcp.runtime.supervisor import ChildContext
from cloud.storage.engine import Engine, Tx

log = logging.getLogger(__name__)
_decode_entry = msgspec.msgpack.Decoder(Entry).decode


class TreeHead(msgspec.Struct, frozen=True):
    size: int
    ts_ms: int
    root: bytes
    key_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        """What the signature covers (docs/audit.md)."""
        return b"cybernetic-audit-head-v1\x00" + msgspec.msgpack.encode(
            [self.size, self.ts_ms, self.root]
        )


class AuditLog:
    def __init__(
        self,
        engine: Engine,
        signer: Signer,
        *,
        every_s: float = 1.0,
        gap_wait_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.engine = engine
        self.signer = signer
        self.every_s = every_s
        self.gap_wait_s = gap_wait_s
        self.clock = clock
        self.tree = MerkleTree()
        self.chains: dict[str, ChainState] = {}
        self.findings = Counter(
            "cybernetic_audit_findings",
            "Audit findings (a gateway chain with a gap, repeat, fork, bad digest...), by kind",
            ["kind"],
            registry=registry,
        )
        self.appended = Counter(
            "cybernetic_audit_entries", "Entries appended to the audit log", registry=registry
        )
        Gauge(
            "cybernetic_audit_log_size", "Leaves in the audit log", registry=registry
        ).set_function(lambda: float(len(self.tree)))

    async def load(self) -> None:
        """The tree and each gateway chain's head from the stored log."""
        leaves, heads = await self.engine.read(_load)
        self.tree = MerkleTree(leaves)
        self.chains = {source: ChainState(seq, h) for source, seq, h in heads}

    async def run(self, ctx: ChildContext) -> None:
        await self.load()
        ctx.ready()
        while True:
            await self.round()
            await asyncio.sleep(self.every_s)

    async def round(self) -> int:
        """Take what the inbox holds; entries appended."""
        now = int(self.clock() * 1000)
        pending = await self.engine.read(_inbox)
        if not pending:
            return 0
        tree, chains = self.tree, dict(self.chains)
        appended: list[tuple[int, Entry, bytes, str]] = []
        findings: list[Finding] = []
        taken: list[tuple[str, int]] = []
        size = len(tree)
        leaves: list[bytes] = []
        for source, rows in _by_source(pending).items():
            state = chains.get(source, ChainState())
            for seq, raw, payload, received_ms, logged in rows:
                entry = _decode(raw)
                if isinstance(entry, str):
                    # refused with its reason: an entry no store can hold must not stop the log
                    findings.append(Finding(source, "hash", seq, "a storable entry", entry))
                    taken.append((source, seq))
                    continue
                if logged is not None or entry.seq <= state.seq:
                    taken.append((source, seq))
                    if logged is not None and logged != entry_hash(entry):
                        # a second, different entry for a logged seq: the chain forked
                        fork = Finding(source, "fork", seq, logged.hex(), entry_hash(entry).hex())
                        findings.append(fork)
                    continue  # else the same entry shipped again (at least once): nothing new
                if entry.seq > state.seq + 1 and now - received_ms < self.gap_wait_s * 1000:
                    break  # the missing entries may still come: wait, in order
                state, found = check_chain(
                    source, [(entry, None)], state, payloads={entry.seq: payload}
                )
                findings.extend(found)
                taken.append((source, seq))
                if any(f.kind in {"repeat", "foreign"} for f in found):
                    continue  # not a new leaf
                digest = state.head  # the entry's hash, as check_chain computed it
                leaf = leaf_hash(digest)  # the leaf data is the entry's hash
                appended.append((size + len(leaves), entry, digest, _json(payload)))
                leaves.append(leaf)
            chains[source] = state
        for leaf in leaves:
            tree.append(leaf)
        head = self._sign(len(tree), tree.root(), now) if leaves else None
        try:
            await self.engine.write(lambda tx: _commit(tx, appended, findings, taken, head, now))
        except BaseException:
            self.tree = MerkleTree(tree.levels[0][:size])  # nothing of this round is stored
            raise
        self.chains = chains
        self.appended.inc(len(appended))
        for finding in findings:
            self.findings.labels(finding.kind).inc()
            log.warning("audit finding", extra={"finding": str(finding)})
        return len(appended)

    def _sign(self, size: int, root: bytes, now: int) -> TreeHead:
        unsigned = TreeHead(size, now, root, self.signer.key_id, b"")
        return msgspec.structs.replace(
            unsigned, signature=self.signer.sign(unsigned.signed_bytes())
        )

    # -- proofs ---------------------------------------------------------------------------
    async def latest_head(self) -> TreeHead | None:
        return await self.engine.read(latest_head)

    def inclusion(self, leaf: int, size: int) -> list[bytes]:
        return self.tree.inclusion_proof(leaf, size)

    def consistency(self, old: int, new: int) -> list[bytes]:
        return self.tree.consistency_proof(old, new)


_INT64 = 1 << 63


def _decode(raw: bytes) -> Entry | str:
    """The entry, or why it cannot be taken."""
    try:
        entry = _decode_entry(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return f"undecodable: {exc}"
    return unstorable(entry) or entry


def unstorable(entry: Entry) -> str | None:
    """Why ``entry`` cannot be stored as it is (None when it can): numbers beyond 64 bits,
    text with NUL characters (PostgreSQL refuses them), hashes of the wrong length."""
    if not 0 < entry.seq < _INT64 or not -_INT64 <= entry.ts_ms < _INT64:
        return f"seq or ts_ms out of range ({entry.seq}, {entry.ts_ms})"
    texts = (entry.source, entry.kind, entry.actor, entry.subject, entry.causation)
    if any("\x00" in t for t in texts):
        return "a text field holds a NUL character"
    if len(entry.digest) != 32 or len(entry.prev) != 32:
        return "digest and prev must be 32 bytes"
    return None


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


_Pending = tuple[int, bytes, dict[str, Any], int, bytes | None]
"""seq, entry bytes, payload, received_ms, the hash logged for that seq already"""


def _by_source(rows: list[tuple[Any, ...]]) -> dict[str, list[_Pending]]:
    out: dict[str, list[_Pending]] = {}
    for source, seq, raw, payload, received, logged in rows:
        decoded = msgspec.json.decode(payload) if isinstance(payload, str | bytes) else payload
        known = None if logged is None else bytes(logged)
        out.setdefault(source, []).append((int(seq), bytes(raw), decoded, int(received), known))
    return out


def _load(tx: Tx) -> tuple[list[bytes], list[tuple[str, int, bytes]]]:
    leaves = [
        leaf_hash(bytes(h)) for (h,) in tx.execute("SELECT hash FROM audit_events ORDER BY leaf")
    ]
    heads = tx.execute(
        "SELECT e.source, e.seq, e.hash FROM audit_events AS e JOIN "
        "(SELECT source, max(seq) AS seq FROM audit_events GROUP BY source) AS m "
        "ON e.source = m.source AND e.seq = m.seq"
    )
    return leaves, [(s, int(q), bytes(h)) for s, q, h in heads]


def _inbox(tx: Tx) -> list[tuple[Any, ...]]:
    """Inbox rows in order, each with the hash already logged for its (source, seq), if any."""
    return tx.execute(
        "SELECT i.source, i.seq, i.entry, i.payload, i.received_ms, e.hash FROM audit_inbox AS i "
        "LEFT JOIN audit_events AS e ON e.source = i.source AND e.seq = i.seq "
        "ORDER BY i.source, i.seq LIMIT 20000"
    )


def _commit(  # noqa: PLR0917 - one round's parts, in the order they are written
    tx: Tx,
    appended: list[tuple[int, Entry, bytes, str]],
    findings: list[Finding],
    taken: list[tuple[str, int]],
    head: TreeHead | None,
    now: int,
) -> None:
    tx.executemany(
        "INSERT INTO audit_events (leaf, source, seq, ts_ms, kind, actor, subject, digest, "
        "causation, prev_hash, hash, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                leaf,
                e.source,
                e.seq,
                e.ts_ms,
                e.kind,
                e.actor,
                e.subject,
                e.digest,
                e.causation,
                e.prev,
                digest,
                payload,
            )
            for leaf, e, digest, payload in appended
        ],
    )
    tx.executemany(
        "INSERT INTO audit_findings (ts_ms, source, kind, seq, expected, found) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(now, f.source, f.kind, f.seq, f.expected, f.found) for f in findings],
    )
    tx.executemany("DELETE FROM audit_inbox WHERE source = ? AND seq = ?", taken)
    if head is not None:
        tx.executemany(
            "INSERT INTO audit_heads (size, ts_ms, root, key_id, signature) VALUES (?, ?, ?, ?, ?)",
            [(head.size, head.ts_ms, head.root, head.key_id, head.signature)],
        )


def latest_head(tx: Tx) -> TreeHead | None:
    rows = tx.execute(
        "SELECT size, ts_ms, root, key_id, signature FROM audit_heads ORDER BY size DESC LIMIT 1"
    )
    if not rows:
        return None
    size, ts, root, key_id, sig = rows[0]
    return TreeHead(int(size), int(ts), bytes(root), key_id, bytes(sig))
