"""``cybernetic audit verify``: the whole audit log checked from what is stored, nothing trusted.

1. Every stored entry is rebuilt from its columns and hashed again: the hash must be the one
   stored (a changed row is found here, at its leaf).
2. Leaves must be dense from 0; each gateway's entries, in leaf order, must form its chain
   (:func:`~amcp.audit.chain.check_chain`: a dropped, swapped or inserted row is a gap, repeat
   or fork at its sequence number; an entry of another gateway is foreign).
3. The tree is rebuilt from the leaves; every stored tree head must have the root of its size,
   a valid signature by the audit key, and be consistent with the head before it (a consistency
   proof from the rebuilt tree, checked with the RFC 9162 algorithm).

Each problem is one line saying where (leaf, gateway and sequence, or tree size) and what was
expected and found. The findings recorded at ingest are listed too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import msgspec

from amcp.audit.chain import ChainState, Entry, check_chain, entry_hash
from amcp.audit.merkle import MerkleTree, ProofError, leaf_hash, verify_consistency
from amcp.crypto.keyring import Keyring
from amcp.crypto.keystore import KeyStore, KeyStoreError
from cloud.audit import TreeHead
from cloud.storage.engine import Tx


class Report(msgspec.Struct):
    entries: int = 0
    heads: int = 0
    gateways: int = 0
    problems: list[str] = msgspec.field(default_factory=list)
    findings: list[str] = msgspec.field(default_factory=list)
    """Findings recorded at ingest (gaps, forks... in what gateways sent)."""


def audit_keys(key_dir: Path) -> Keyring:
    """The audit key's keyring (its public halves), or an empty one when there is none."""
    store = KeyStore(key_dir)
    try:
        return store.keyring() if store.exists() else Keyring()
    except (KeyStoreError, OSError, ValueError):
        return Keyring()


def _rows(tx: Tx, gateway: str | None) -> Iterator[tuple[int, Entry, bytes, object]]:
    sql = (
        "SELECT leaf, source, seq, ts_ms, kind, actor, subject, digest, causation, prev_hash, "
        "hash, payload FROM audit_events"
    )
    params: tuple[object, ...] = ()
    if gateway is not None:
        sql += " WHERE source = ?"
        params = (gateway,)
    for row in tx.execute(sql + " ORDER BY leaf", params):
        leaf, source, seq, ts, kind, actor, subject, digest, causation, prev, h, payload = row
        entry = Entry(
            source, int(seq), int(ts), kind, actor, subject, bytes(digest), causation, bytes(prev)
        )
        yield int(leaf), entry, bytes(h), payload


def verify(tx: Tx, keys: Keyring, gateway: str | None = None) -> Report:
    report = Report()
    recorded = tx.execute(
        "SELECT source, seq, kind, expected, found FROM audit_findings ORDER BY id"
    )
    known = {(source, int(seq), kind) for source, seq, kind, _, _ in recorded}
    tree = MerkleTree()
    chains: dict[str, ChainState] = {}
    expected_leaf = 0
    for leaf, entry, stored, payload in _rows(tx, gateway):
        report.entries += 1
        if gateway is None and leaf != expected_leaf:
            report.problems.append(f"leaf {expected_leaf}: missing (next stored leaf is {leaf})")
        expected_leaf = leaf + 1
        own = entry_hash(entry)
        if own != stored:
            report.problems.append(
                f"leaf {leaf} ({entry.source} entry {entry.seq}): hash expected {own.hex()}, "
                f"found {stored.hex()} (the row was changed)"
            )
        decoded = json.loads(payload) if isinstance(payload, str | bytes) else payload
        if not isinstance(decoded, dict):
            decoded = {"value": decoded}
        state, findings = check_chain(
            entry.source, [(entry, None)], chains.get(entry.source), payloads={entry.seq: decoded}
        )
        chains[entry.source] = state
        report.problems.extend(
            f"leaf {leaf}: {f}" for f in findings if (f.source, f.seq, f.kind) not in known
        )  # a gap the gateway left was recorded when it came: a finding, not tampering
        tree.append(leaf_hash(stored))
    report.gateways = len(chains)
    if gateway is None:
        _heads(tx, tree, keys, report)
        _snapshots(tx, report)
    report.findings = [
        f"{source} entry {seq}: {kind}: expected {expected}, found {found}"
        for source, seq, kind, expected, found in recorded
        if gateway is None or source == gateway
    ]
    return report


def _heads(tx: Tx, tree: MerkleTree, keys: Keyring, report: Report) -> None:
    previous: TreeHead | None = None
    for size, ts, root, key_id, sig in tx.execute(
        "SELECT size, ts_ms, root, key_id, signature FROM audit_heads ORDER BY size"
    ):
        head = TreeHead(int(size), int(ts), bytes(root), key_id, bytes(sig))
        report.heads += 1
        if head.size > len(tree):
            report.problems.append(f"tree head {head.size}: the log has only {len(tree)} leaves")
            continue
        if tree.root(head.size) != head.root:
            report.problems.append(
                f"tree head {head.size}: root expected {tree.root(head.size).hex()}, "
                f"found {head.root.hex()}"
            )
        if not _signed(head, keys):
            report.problems.append(f"tree head {head.size}: bad signature (key {head.key_id})")
        if previous is not None and previous.size < head.size:
            try:
                proof = tree.consistency_proof(previous.size, head.size)
                verify_consistency(previous.size, head.size, previous.root, head.root, proof)
            except ProofError as exc:
                report.problems.append(
                    f"tree heads {previous.size} -> {head.size}: not consistent ({exc})"
                )
        previous = head


_entry_decoder = msgspec.msgpack.Decoder(Entry)


def _snapshots(tx: Tx, report: Report) -> None:
    """Each CRDT snapshot matches the ``crdt.snapshot`` entry the log holds for it (its digest
    and time), and its state, when kept, hashes to that digest (cloud.snapshots)."""
    logged: dict[tuple[str, int], str] = {}
    for subject, payload in tx.execute(
        "SELECT subject, payload FROM audit_events WHERE kind = 'crdt.snapshot'"
    ):
        data = json.loads(payload) if isinstance(payload, str | bytes) else payload
        if isinstance(data, dict) and isinstance(data.get("taken_ms"), int):
            logged[(str(subject), data["taken_ms"])] = str(data.get("digest", ""))
    for raw, payload in tx.execute("SELECT entry, payload FROM audit_inbox"):
        try:  # shipped, not logged yet: the log's next round takes it
            entry = _entry_decoder.decode(bytes(raw))
        except (msgspec.DecodeError, TypeError):
            continue  # a gateway's bad row: the log makes it a finding
        data = json.loads(payload) if isinstance(payload, str | bytes) else payload
        if entry.kind == "crdt.snapshot" and isinstance(data, dict):
            key = (entry.subject, int(data.get("taken_ms", 0)))
            logged.setdefault(key, str(data.get("digest", "")))
    for ns, taken, digest, state in tx.execute(
        "SELECT namespace, taken_ms, digest, state FROM crdt_snapshots ORDER BY namespace, taken_ms"
    ):
        where = f"snapshot of {ns} at {taken}"
        expected = logged.get((str(ns), int(taken)))
        if expected is None:
            report.problems.append(f"{where}: no crdt.snapshot entry in the log")
        elif expected != bytes(digest).hex():
            report.problems.append(
                f"{where}: digest expected {expected} (the log), found {bytes(digest).hex()}"
            )
        if state and hashlib.sha256(bytes(state)).hexdigest() != bytes(digest).hex():
            report.problems.append(f"{where}: the state does not hash to its digest")


def _signed(head: TreeHead, keys: Keyring) -> bool:
    found = keys.get(head.key_id)
    return found is not None and found[1](head.signature, head.signed_bytes())
