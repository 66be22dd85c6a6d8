"""Signing keys and the public record of a key (:class:`KeyEntry`).

Key ids are derived from the key (a hash of the Ed25519 public key, an HMAC of a fixed label
under the secret), so two nodes never disagree about a key's id and an id never reveals a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Literal, Protocol

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ED25519: Literal["ed25519"] = "ed25519"
HMAC_SHA256: Literal["hmac-sha256"] = "hmac-sha256"
Algorithm = Literal["ed25519", "hmac-sha256"]

_HMAC_ID_LABEL = b"amcp key id v1"
MIN_HMAC_SECRET = 32
"""Bytes: shorter secrets are refused (HMAC-SHA256's own block of strength)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ed25519_key_id(public_raw: bytes) -> str:
    """``ed:`` and the first 8 bytes of SHA-256 of the raw 32-byte public key, in hex."""
    return "ed:" + hashlib.sha256(public_raw).digest()[:8].hex()


def hmac_key_id(secret: bytes) -> str:
    """``hm:`` and the first 8 bytes of HMAC-SHA256(secret, label): stable, reveals nothing."""
    return "hm:" + hmac.digest(secret, _HMAC_ID_LABEL, "sha256")[:8].hex()


class KeyEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a verifier knows about one key: whose it is, how to check it, whether it still counts.

    ``material`` is the raw Ed25519 public key, or the HMAC secret (so keyrings holding HMAC
    entries are secrets and stored 0600). ``not_after_ms`` is set when the key is rotated out:
    the overlap lets envelopes signed just before a rotation still verify.
    """

    key_id: str
    owner: str
    alg: Algorithm
    material: bytes
    created_ms: int = 0
    not_after_ms: int | None = None
    revoked_ms: int | None = None

    def retired(self, not_after_ms: int) -> KeyEntry:
        return msgspec.structs.replace(self, not_after_ms=not_after_ms)

    def revoked(self, revoked_ms: int) -> KeyEntry:
        return msgspec.structs.replace(self, revoked_ms=revoked_ms)

    def status(self, at_ms: int) -> str:
        """``active``, ``overlap`` (retiring), ``retired`` or ``revoked`` at ``at_ms``."""
        if self.revoked_ms is not None and self.revoked_ms <= at_ms:
            return "revoked"
        if self.not_after_ms is None:
            return "active"
        return "overlap" if at_ms <= self.not_after_ms else "retired"


class Signer(Protocol):
    """A node's current signing key. ``sign`` must be safe to call from several threads."""

    @property
    def key_id(self) -> str: ...

    @property
    def owner(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...

    def entry(self) -> KeyEntry: ...


class Ed25519Signer:
    """An Ed25519 node key: for control-plane traffic (policies, announcements, audit heads)."""

    def __init__(self, owner: str, private_key: Ed25519PrivateKey, created_ms: int = 0) -> None:
        self._owner = owner
        self._key = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._key_id = ed25519_key_id(self._public)
        self._created_ms = created_ms or now_ms()

    @classmethod
    def generate(cls, owner: str) -> Ed25519Signer:
        return cls(owner, Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def entry(self) -> KeyEntry:
        return KeyEntry(self._key_id, self._owner, ED25519, self._public, self._created_ms)


class HmacSigner:
    """An HMAC-SHA256 link key: for high-rate telemetry where Ed25519 would cost too much.

    One key per direction of a link (see :func:`amcp.crypto.derive_link_keys`): a shared
    key used both ways would let one end's envelopes be reflected back as the other's.
    """

    def __init__(self, owner: str, secret: bytes, created_ms: int = 0) -> None:
        if len(secret) < MIN_HMAC_SECRET:
            raise ValueError(f"HMAC secret is {len(secret)} bytes, need >= {MIN_HMAC_SECRET}")
        self._owner = owner
        self._secret = bytes(secret)
        self._key_id = hmac_key_id(self._secret)
        self._created_ms = created_ms or now_ms()

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def owner(self) -> str:
        return self._owner

    def sign(self, data: bytes) -> bytes:
        return hmac.digest(self._secret, data, "sha256")

    def entry(self) -> KeyEntry:
        return KeyEntry(self._key_id, self._owner, HMAC_SHA256, self._secret, self._created_ms)
