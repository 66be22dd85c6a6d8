"""Per-link HMAC session keys derived with HKDF-SHA256 (RFC 5869) from one shared secret.

Until enrolment (issue #5) exists the shared secret comes from configuration; afterwards it is
the output of the enrolment key agreement. Either way each direction gets its own key, bound to
both node names and to a key epoch, so a renewal (new epoch or new salt) yields unrelated keys.
"""

from __future__ import annotations

from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from amcp.crypto.keys import HmacSigner

_INFO_PREFIX = b"amcp link key v1"


class LinkKeys(NamedTuple):
    """``up`` signs gateway → cloud envelopes, ``down`` signs cloud → gateway envelopes."""

    up: HmacSigner
    down: HmacSigner


def derive_key(secret: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 extract-and-expand; ``info`` must name what the key is for."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def derive_link_keys(
    shared_secret: bytes, *, gateway: str, cloud: str, salt: bytes = b"", epoch: int = 0
) -> LinkKeys:
    """Both directional keys of one gateway-cloud link; both ends compute the same pair."""
    if len(shared_secret) < 16:
        raise ValueError("link secret must be at least 16 bytes")
    ctx = b"|".join([_INFO_PREFIX, gateway.encode(), cloud.encode(), str(epoch).encode()])
    up = derive_key(shared_secret, salt=salt, info=ctx + b"|up")
    down = derive_key(shared_secret, salt=salt, info=ctx + b"|down")
    return LinkKeys(up=HmacSigner(gateway, up), down=HmacSigner(cloud, down))
