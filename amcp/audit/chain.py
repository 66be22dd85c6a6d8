"""A gateway's audit chain: entries linked by hash, and the check that finds what is wrong.

Each :class:`Entry` names the hash of the one before it (``prev``; 32 zero bytes before the
first), so changing, dropping, swapping or inserting an entry breaks every link after it. An
entry's hash is ``SHA-256("cybernetic-audit-entry-v1" || 0x00 || msgpack(entry))`` over the
entry as an array (field order fixed), so any implementation can recompute it
(docs/audit.md). ``digest`` is the SHA-256 of the payload's canonical JSON (sorted keys, no
spaces, UTF-8), so the payload can travel and be stored apart and still be checked.

:func:`check_chain` walks entries in order and returns :class:`Finding` s — never raises on bad
data: a gap, a repeat, a fork (a link to the wrong previous hash), a bad digest, another
gateway's entry — each with the sequence number and what was expected and found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

DOMAIN = b"cybernetic-audit-entry-v1\x00"
GENESIS = bytes(32)
_encode = msgspec.msgpack.Encoder().encode
_canonical = msgspec.json.Encoder(order="sorted", enc_hook=str).encode


class Entry(msgspec.Struct, frozen=True, array_like=True):
    source: str
    """The gateway (or ``cloud``) whose chain it is."""
    seq: int
    """1, 2, 3... with no gap."""
    ts_ms: int
    kind: str
    """What happened (``policy.applied``, ``s2.zombie``, ``config.reloaded``...)."""
    actor: str
    """Who did it (``cloud``, ``operator``, ``s2``, ``rules``...)."""
    subject: str
    """What it was done to (a device, a capability, a policy name...)."""
    digest: bytes
    causation: str
    """The id of what caused it (an envelope or intent id), empty when none is known."""
    prev: bytes


def payload_digest(payload: Mapping[str, Any]) -> bytes:
    """SHA-256 of the payload as canonical JSON: keys sorted, no spaces, UTF-8 (msgspec's
    ``order="sorted"``; values JSON cannot hold are written as their text)."""
    return hashlib.sha256(_canonical(payload)).digest()


def entry_hash(entry: Entry) -> bytes:
    return hashlib.sha256(DOMAIN + _encode(entry)).digest()


FindingKind = Literal["gap", "repeat", "fork", "digest", "foreign", "hash"]


class Finding(msgspec.Struct, frozen=True):
    """Something wrong with a chain, located."""

    source: str
    kind: FindingKind
    seq: int
    expected: str
    found: str

    def __str__(self) -> str:
        return (
            f"{self.source} entry {self.seq}: {self.kind}: expected {self.expected}, "
            f"found {self.found}"
        )


class ChainState(msgspec.Struct):
    """Where a verified chain stands: its last sequence number and hash."""

    seq: int = 0
    head: bytes = GENESIS


def check_chain(
    source: str,
    entries: Iterable[tuple[Entry, bytes | None]],
    state: ChainState | None = None,
    *,
    payloads: Mapping[int, Mapping[str, Any]] | None = None,
) -> tuple[ChainState, list[Finding]]:
    """Check ``(entry, claimed hash or None)`` pairs of ``source`` in order from ``state``.

    A finding does not stop the walk: after a gap the chain is followed from the entry found
    (so one dropped row is one finding, not a finding per later entry); after a fork it
    continues from the forked entry. Returns the state after the last entry and the findings.
    """
    at = ChainState(state.seq, state.head) if state else ChainState()
    findings: list[Finding] = []
    for entry, claimed in entries:
        if entry.source != source:
            findings.append(Finding(source, "foreign", entry.seq, source, entry.source))
            continue
        if entry.seq <= at.seq:
            findings.append(
                Finding(source, "repeat", entry.seq, f"seq {at.seq + 1}", f"seq {entry.seq}")
            )
            continue
        if entry.seq != at.seq + 1:
            findings.append(
                Finding(source, "gap", entry.seq, f"seq {at.seq + 1}", f"seq {entry.seq}")
            )
        elif entry.prev != at.head:
            findings.append(Finding(source, "fork", entry.seq, at.head.hex(), entry.prev.hex()))
        own = entry_hash(entry)
        if claimed is not None and claimed != own:
            findings.append(Finding(source, "hash", entry.seq, own.hex(), claimed.hex()))
        if payloads is not None and entry.seq in payloads:
            digest = payload_digest(payloads[entry.seq])
            if digest != entry.digest:
                findings.append(
                    Finding(source, "digest", entry.seq, entry.digest.hex(), digest.hex())
                )
        at = ChainState(entry.seq, own)
    return at, findings
