"""The keys a node trusts, by key id, with rotation overlap and revocation.

Lookups happen on every envelope, so verifiers are built once per key (the Ed25519 public key
object is loaded when the entry is added, not per message). Reads are lock-free: mutations
replace the whole mapping, which is atomic under CPython, so one keyring may be shared by
threads while an operator rotates or revokes.
"""

from __future__ import annotations

import hmac
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from amcp.crypto.keys import ED25519, KeyEntry, ed25519_key_id, hmac_key_id

Verify = Callable[[bytes, bytes], bool]
"""``verify(signature, data) -> bool``; constant-time for HMAC."""

Buffer = bytes | memoryview
VerifyParts = Callable[[Buffer, Sequence[Buffer]], bool]
"""``verify(signature, parts) -> bool`` over the concatenation of ``parts``, without making it:
envelopes are verified straight from views into the received frame (no copy of the payload)."""


class KeyringFile(msgspec.Struct, forbid_unknown_fields=True):
    entries: list[KeyEntry]


def _ed25519_verifier(public_raw: bytes) -> Verify:
    key = Ed25519PublicKey.from_public_bytes(public_raw)

    def verify(signature: bytes, data: bytes) -> bool:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    return verify


def _ed25519_parts_verifier(verify: Verify) -> VerifyParts:
    def verify_parts(signature: Buffer, parts: Sequence[Buffer]) -> bool:
        return verify(bytes(signature), b"".join(parts))

    return verify_parts


def _hmac_verifier(secret: bytes) -> Verify:
    def verify(signature: bytes, data: bytes) -> bool:
        return hmac.compare_digest(hmac.digest(secret, data, "sha256"), signature)

    return verify


def _hmac_parts_verifier(secret: bytes) -> VerifyParts:
    # keyed once: each check copies the state with the key's inner and outer pads absorbed
    keyed = hmac.new(secret, digestmod="sha256")

    def verify_parts(signature: Buffer, parts: Sequence[Buffer]) -> bool:
        h = keyed.copy()
        for part in parts:
            h.update(part)
        return hmac.compare_digest(h.digest(), signature)

    return verify_parts


def _check_id(entry: KeyEntry) -> None:
    """A key id must be the one derived from its material, or rotation bookkeeping lies."""
    if entry.alg == ED25519:
        if len(entry.material) != 32:
            raise ValueError(f"{entry.key_id}: Ed25519 public key must be 32 bytes")
        expected = ed25519_key_id(entry.material)
    else:
        expected = hmac_key_id(entry.material)
    if entry.key_id != expected:
        raise ValueError(f"key id {entry.key_id!r} does not match its key (expected {expected})")


class Keyring:
    def __init__(self, entries: Iterable[KeyEntry] = ()) -> None:
        # one mapping, replaced whole on change: a reader sees an entry with its verifiers
        self._entries: dict[str, tuple[KeyEntry, Verify, VerifyParts]] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: KeyEntry) -> None:
        """Trust ``entry`` (replacing an entry with the same id: use it to record a rotation)."""
        _check_id(entry)
        verifier = (
            _ed25519_verifier(entry.material)
            if entry.alg == ED25519
            else _hmac_verifier(entry.material)
        )
        parts = (
            _ed25519_parts_verifier(verifier)
            if entry.alg == ED25519
            else _hmac_parts_verifier(entry.material)
        )
        entries = dict(self._entries)
        entries[entry.key_id] = (entry, verifier, parts)
        self._entries = entries

    def get(self, key_id: str) -> tuple[KeyEntry, Verify] | None:
        found = self._entries.get(key_id)
        return None if found is None else (found[0], found[1])

    def get_parts(self, key_id: str) -> tuple[KeyEntry, VerifyParts] | None:
        """Like :meth:`get`, with a verifier over parts of the signed bytes."""
        found = self._entries.get(key_id)
        return None if found is None else (found[0], found[2])

    def entry(self, key_id: str) -> KeyEntry:
        found = self._entries.get(key_id)
        if found is None:
            raise KeyError(key_id)
        return found[0]

    def entries(self) -> list[KeyEntry]:
        return [found[0] for found in self._entries.values()]

    def retire(self, key_id: str, not_after_ms: int) -> None:
        """Start the rotation overlap: the key verifies until ``not_after_ms``, then never."""
        self.add(self.entry(key_id).retired(not_after_ms))

    def revoke(self, key_id: str, revoked_ms: int) -> None:
        self.add(self.entry(key_id).revoked(revoked_ms))

    def to_json(self) -> bytes:
        return msgspec.json.encode(KeyringFile(self.entries()))

    @classmethod
    def from_json(cls, data: bytes) -> Keyring:
        return cls(msgspec.json.decode(data, type=KeyringFile).entries)

    def save(self, path: Path) -> None:
        """Write atomically, readable by the owner only (HMAC entries are secrets)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keyring-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(msgspec.json.format(self.to_json(), indent=2))
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Keyring:
        return cls.from_json(path.read_bytes())
