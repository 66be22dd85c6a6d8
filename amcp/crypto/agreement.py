"""Authenticated key agreement for a gateway-cloud link: the source of the link secret.

Each end makes a fresh X25519 key pair and signs its public half with its Ed25519 node key;
the X25519 shared secret then goes through HKDF into the 32-byte link secret that
:mod:`amcp.link` turns into the two directional HMAC keys. Nothing secret crosses the wire, so
the exchange may travel on a channel that is authenticated but not private (enrolment runs
before the gateway has a TLS certificate).

Two messages (SIGMA-style, the initiator is always the gateway)::

    gateway → cloud   eph_g, sig_g = Ed25519_g(transcript(eph_g))
    cloud → gateway   eph_c, sig_c = Ed25519_c(transcript(eph_g, eph_c))
    secret = HKDF(X25519(eph, peer_eph), salt=SHA-256(transcript(eph_g, eph_c)), info=…)

The transcript binds both node ids, the link epoch and both ephemeral keys, so a signature
cannot be replayed into another link, another epoch or another exchange. Ephemeral keys are
forgotten after the exchange (forward secrecy). Renewal is the same exchange with
``epoch + 1``: the cloud refuses an epoch that does not move forward.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from amcp.crypto.hkdf import derive_key
from amcp.crypto.keys import Ed25519Signer

_LABEL = b"amcp link agreement v1"
SECRET_BYTES = 32


class AgreementError(Exception):
    """The peer's half of the exchange does not verify (wrong key, wrong link or epoch)."""


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def transcript(
    *, gateway: str, cloud: str, epoch: int, gateway_ephemeral: bytes, cloud_ephemeral: bytes = b""
) -> bytes:
    """The bytes each side signs: length-prefixed, so no two field splits collide."""
    return b"".join(
        [
            _field(_LABEL),
            _field(gateway.encode()),
            _field(cloud.encode()),
            struct.pack(">Q", epoch),
            _field(gateway_ephemeral),
            _field(cloud_ephemeral),
        ]
    )


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _verify(node_key: bytes, signature: bytes, data: bytes, who: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(node_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        raise AgreementError(f"{who}'s key agreement signature does not verify") from None


def _secret(
    private: X25519PrivateKey, peer: bytes, full_transcript: bytes, *, gateway: str, cloud: str
) -> bytes:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        raise AgreementError("peer's ephemeral key is not a valid X25519 key") from None
    salt = hashlib.sha256(full_transcript).digest()
    info = b"|".join([b"amcp link secret v1", gateway.encode(), cloud.encode()])
    return derive_key(shared, salt=salt, info=info, length=SECRET_BYTES)


@dataclass(frozen=True)
class Offer:
    """The gateway's first message: its ephemeral public key and the signature over it."""

    ephemeral: bytes
    signature: bytes


@dataclass(frozen=True)
class Answer:
    """The cloud's reply; ``secret`` stays with the cloud and is never sent."""

    ephemeral: bytes
    signature: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"Answer(ephemeral={self.ephemeral.hex()[:16]}…)"


class GatewayAgreement:
    """The gateway's side of one exchange (holds the ephemeral private key until it ends)."""

    def __init__(self, signer: Ed25519Signer, *, cloud: str, epoch: int) -> None:
        self.gateway = signer.owner
        self.cloud = cloud
        self.epoch = epoch
        self._private: X25519PrivateKey | None = X25519PrivateKey.generate()
        eph = _raw(self._private.public_key())
        data = transcript(gateway=self.gateway, cloud=cloud, epoch=epoch, gateway_ephemeral=eph)
        self.offer = Offer(eph, signer.sign(data))

    def finish(self, cloud_ephemeral: bytes, cloud_signature: bytes, cloud_key: bytes) -> bytes:
        """Check the cloud's answer against its node key and return the link secret."""
        if self._private is None:
            raise AgreementError("this exchange already finished (ephemeral key discarded)")
        full = transcript(
            gateway=self.gateway,
            cloud=self.cloud,
            epoch=self.epoch,
            gateway_ephemeral=self.offer.ephemeral,
            cloud_ephemeral=cloud_ephemeral,
        )
        _verify(cloud_key, cloud_signature, full, "cloud")
        private, self._private = self._private, None
        return _secret(private, cloud_ephemeral, full, gateway=self.gateway, cloud=self.cloud)


def cloud_answer(
    signer: Ed25519Signer, *, gateway: str, epoch: int, offer: Offer, gateway_key: bytes
) -> Answer:
    """Check a gateway's offer against its node key; answer it and compute the link secret."""
    first = transcript(
        gateway=gateway, cloud=signer.owner, epoch=epoch, gateway_ephemeral=offer.ephemeral
    )
    _verify(gateway_key, offer.signature, first, f"gateway {gateway}")
    private = X25519PrivateKey.generate()
    eph = _raw(private.public_key())
    full = transcript(
        gateway=gateway,
        cloud=signer.owner,
        epoch=epoch,
        gateway_ephemeral=offer.ephemeral,
        cloud_ephemeral=eph,
    )
    secret = _secret(private, offer.ephemeral, full, gateway=gateway, cloud=signer.owner)
    return Answer(eph, signer.sign(full), secret)


def renewal_due(established_ms: int, now_ms: int, interval_s: float) -> bool:
    """Whether a link secret made at ``established_ms`` should be replaced (a new epoch)."""
    return now_ms - established_ms >= interval_s * 1000
