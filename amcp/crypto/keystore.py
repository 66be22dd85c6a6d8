"""A node's own Ed25519 keys on disk: what `cybernetic keys gen|show|rotate|revoke` manages.

Layout of the key directory (created 0700)::

    identity.json        {"node": ..., "active": key id}
    keyring.json         KeyEntry of every key this node has had (public halves only)
    private/<id>.pem     PKCS#8 private keys, 0600, removed when the key is revoked

The keyring file is also what a peer imports to trust this node (until enrolment, issue #5,
distributes keys itself).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from amcp.crypto.keyring import Keyring
from amcp.crypto.keys import Ed25519Signer, now_ms


class KeyStoreError(Exception):
    """The key directory is missing, inconsistent, or the operation is not allowed."""


class Identity(msgspec.Struct, forbid_unknown_fields=True):
    node: str
    active: str


class KeyStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def _identity_path(self) -> Path:
        return self.directory / "identity.json"

    @property
    def keyring_path(self) -> Path:
        return self.directory / "keyring.json"

    def _private_path(self, key_id: str) -> Path:
        return self.directory / "private" / (key_id.replace(":", "_") + ".pem")

    def exists(self) -> bool:
        return self._identity_path.exists()

    def identity(self) -> Identity:
        try:
            return msgspec.json.decode(self._identity_path.read_bytes(), type=Identity)
        except FileNotFoundError:
            raise KeyStoreError(f"no node identity in {self.directory} (run `keys gen`)") from None
        except msgspec.DecodeError as exc:
            raise KeyStoreError(f"{self._identity_path}: {exc}") from exc

    def keyring(self) -> Keyring:
        try:
            return Keyring.load(self.keyring_path)
        except FileNotFoundError:
            raise KeyStoreError(f"no keyring in {self.directory}") from None
        except (msgspec.DecodeError, ValueError) as exc:
            raise KeyStoreError(f"{self.keyring_path}: {exc}") from exc

    def signer(self) -> Ed25519Signer:
        """The active signing key, as the Sealer wants it."""
        ident = self.identity()
        entry = self.keyring().entry(ident.active)
        pem = self._private_path(ident.active).read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyStoreError(f"{ident.active}: private key is not Ed25519")
        return Ed25519Signer(ident.node, key, entry.created_ms)

    def generate(self, node: str, *, force: bool = False) -> Ed25519Signer:
        if self.exists() and not force:
            raise KeyStoreError(f"{self.directory} already holds an identity (use rotate)")
        signer = Ed25519Signer.generate(node)
        keyring = Keyring([signer.entry()])
        self._write_private(signer)
        keyring.save(self.keyring_path)
        self._write_identity(Identity(node, signer.key_id))
        return signer

    def rotate(self, overlap_s: float) -> tuple[str, Ed25519Signer]:
        """New active key; the old one keeps verifying for ``overlap_s`` seconds."""
        ident = self.identity()
        keyring = self.keyring()
        signer = Ed25519Signer.generate(ident.node)
        self._write_private(signer)
        keyring.add(signer.entry())
        keyring.retire(ident.active, now_ms() + int(overlap_s * 1000))
        keyring.save(self.keyring_path)
        self._write_identity(Identity(ident.node, signer.key_id))
        return ident.active, signer

    def revoke(self, key_id: str) -> None:
        ident = self.identity()
        if key_id == ident.active:
            raise KeyStoreError(f"{key_id} is the active key: rotate first, then revoke it")
        keyring = self.keyring()
        try:
            keyring.revoke(key_id, now_ms())
        except KeyError:
            raise KeyStoreError(f"no key {key_id!r} in {self.keyring_path}") from None
        keyring.save(self.keyring_path)
        self._private_path(key_id).unlink(missing_ok=True)

    def _write_private(self, signer: Ed25519Signer) -> None:
        path = self._private_path(signer.key_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)
        pem = signer.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)

    def _write_identity(self, ident: Identity) -> None:
        tmp = self._identity_path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(ident))
        tmp.replace(self._identity_path)
