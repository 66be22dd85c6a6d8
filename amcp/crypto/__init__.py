"""Keys for aMCP envelopes: Ed25519 node keys, HMAC-SHA256 link keys, the keyring, HKDF.

The keyring decides a key's algorithm from its id; an envelope never names its algorithm, so a
forged header cannot downgrade Ed25519 to HMAC (the JWT ``alg`` confusion).
"""

from amcp.crypto.hkdf import LinkKeys, derive_link_keys
from amcp.crypto.keyring import Keyring
from amcp.crypto.keys import (
    ED25519,
    HMAC_SHA256,
    Ed25519Signer,
    HmacSigner,
    KeyEntry,
    Signer,
    ed25519_key_id,
    hmac_key_id,
)

__all__ = [
    "ED25519",
    "HMAC_SHA256",
    "Ed25519Signer",
    "HmacSigner",
    "KeyEntry",
    "Keyring",
    "LinkKeys",
    "Signer",
    "derive_link_keys",
    "ed25519_key_id",
    "hmac_key_id",
]
