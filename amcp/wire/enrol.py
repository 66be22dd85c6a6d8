"""Enrolment and renewal frames: how a gateway joins the fleet before any link key exists.

These are not aMCP envelopes (there are no link keys yet), so they are not in the envelope
union: each frame is a tagged msgspec Struct, msgpack on the wire, authenticated by itself.

- :class:`EnrolRequest` (gateway → cloud): signed by the gateway's new Ed25519 node key
  (proof of possession) **and** MACed with a key derived from the one-time bootstrap token
  (proof the operator admitted it). The token itself never travels.
- :class:`EnrolResponse` (cloud → gateway): MACed with the same token key, so a gateway only
  trusts a bundle that came from whoever issued its token; it carries the certificate, the
  fleet's trust bundle, the cloud's node key and its half of the key agreement.
- :class:`RenewRequest` / :class:`RenewResponse`: after enrolment, signed by the two node
  keys; a new certificate and a new link epoch.

Nothing in these frames is secret (the link secret comes from the key agreement), so the
channel needs authenticity, not privacy. Topics: ``{prefix}/{gateway}/request`` and
``{prefix}/{gateway}/response`` with prefix ``cybernetic/enrol``.

Error tree::

    EnrolError              base: the frame was not accepted
    ├── MalformedFrameError  not a frame of this protocol (or too large)
    ├── FrameAuthError       MAC or signature does not verify
    └── TokenFormatError     the bootstrap token text is not a token
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TypeVar

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from amcp.crypto.hkdf import derive_key
from amcp.crypto.keys import Ed25519Signer
from amcp.wire import topics

TOPIC_PREFIX = topics.ENROL_PREFIX
MAX_FRAME_BYTES = 64 * 1024
_SIGNING_LABEL = b"amcp-enrol v1\x00"
_TOKEN_RE = re.compile(r"^cet1\.([0-9a-f]{16})\.([0-9a-f]{64})$")


class EnrolError(Exception):
    """Base of every refusal of an enrolment frame."""


class MalformedFrameError(EnrolError):
    pass


class FrameAuthError(EnrolError):
    pass


class TokenFormatError(EnrolError):
    pass


class EnrolRequest(msgspec.Struct, tag="enrol.request", frozen=True, kw_only=True):
    gateway: str
    token_id: str
    request_id: str
    ts_ms: int
    node_key: bytes
    """The gateway's Ed25519 public key (raw 32 bytes): its envelope identity."""
    csr: bytes
    """PEM certificate signing request for the TLS client key (EC P-256)."""
    epoch: int
    ephemeral: bytes
    agreement_sig: bytes
    signature: bytes = b""
    mac: bytes = b""


class EnrolResponse(msgspec.Struct, tag="enrol.response", frozen=True, kw_only=True):
    gateway: str
    request_id: str
    ok: bool
    reason: str = ""
    cloud: str = ""
    cloud_key: bytes = b""
    certificate: bytes = b""
    trust_bundle: bytes = b""
    epoch: int = 0
    ephemeral: bytes = b""
    agreement_sig: bytes = b""
    mac: bytes = b""


class RenewRequest(msgspec.Struct, tag="renew.request", frozen=True, kw_only=True):
    gateway: str
    request_id: str
    ts_ms: int
    epoch: int
    ephemeral: bytes
    agreement_sig: bytes
    csr: bytes = b""
    """Empty to renew only the link secret."""
    signature: bytes = b""


class RenewResponse(msgspec.Struct, tag="renew.response", frozen=True, kw_only=True):
    gateway: str
    request_id: str
    ok: bool
    reason: str = ""
    certificate: bytes = b""
    trust_bundle: bytes = b""
    epoch: int = 0
    ephemeral: bytes = b""
    agreement_sig: bytes = b""
    signature: bytes = b""


Frame = EnrolRequest | EnrolResponse | RenewRequest | RenewResponse
Signed = EnrolRequest | RenewRequest | RenewResponse
Maced = EnrolRequest | EnrolResponse

_M = TypeVar("_M", EnrolRequest, EnrolResponse)
_S = TypeVar("_S", EnrolRequest, RenewRequest, RenewResponse)

_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)
_encoder = msgspec.msgpack.Encoder()


def new_request_id() -> str:
    return secrets.token_hex(16)


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode(data: bytes) -> Frame:
    if len(data) > MAX_FRAME_BYTES:
        raise MalformedFrameError(f"enrolment frame of {len(data)} bytes over {MAX_FRAME_BYTES}")
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec: bad UTF-8 in a str
        raise MalformedFrameError(f"not an enrolment frame: {exc}") from None


def signing_bytes(frame: Frame) -> bytes:
    """What the signature covers: the frame with ``signature`` and ``mac`` emptied."""
    changes: dict[str, bytes] = {}
    if "signature" in frame.__struct_fields__:
        changes["signature"] = b""
    if "mac" in frame.__struct_fields__:
        changes["mac"] = b""
    return _SIGNING_LABEL + _encoder.encode(msgspec.structs.replace(frame, **changes))


def _mac_input(frame: Maced) -> bytes:
    signature = frame.signature if isinstance(frame, EnrolRequest) else b""
    return signing_bytes(frame) + signature


# -- bootstrap tokens ------------------------------------------------------------------------
@dataclass(frozen=True)
class BootstrapToken:
    """``cet1.<id>.<secret>``: the id is public (logs, lookups), the secret never leaves."""

    token_id: str
    secret: bytes

    @classmethod
    def generate(cls) -> BootstrapToken:
        return cls(secrets.token_hex(8), secrets.token_bytes(32))

    @classmethod
    def parse(cls, text: str) -> BootstrapToken:
        match = _TOKEN_RE.match(text.strip())
        if match is None:
            raise TokenFormatError("bootstrap token is not of the form cet1.<16 hex>.<64 hex>")
        return cls(match.group(1), bytes.fromhex(match.group(2)))

    def text(self) -> str:
        return f"cet1.{self.token_id}.{self.secret.hex()}"

    def mac_key(self) -> bytes:
        return token_mac_key(self.secret)

    def __repr__(self) -> str:
        return f"BootstrapToken(token_id={self.token_id!r})"

    __str__ = __repr__


def token_mac_key(secret: bytes) -> bytes:
    """One-way from the token secret: what the cloud keeps at rest instead of the token."""
    return derive_key(secret, salt=b"", info=b"amcp enrol token mac v1")


def token_fingerprint(mac_key: bytes) -> str:
    """A short non-secret name for a stored token key (never the key itself)."""
    return hashlib.sha256(b"fp|" + mac_key).hexdigest()[:16]


def with_mac(frame: _M, key: bytes) -> _M:
    return msgspec.structs.replace(frame, mac=hmac.digest(key, _mac_input(frame), "sha256"))


def check_mac(frame: Maced, key: bytes) -> None:
    expected = hmac.digest(key, _mac_input(frame), "sha256")
    if not hmac.compare_digest(expected, frame.mac):
        raise FrameAuthError(f"{frame.__struct_config__.tag}: bootstrap token MAC does not verify")


def with_signature(frame: _S, signer: Ed25519Signer) -> _S:
    return msgspec.structs.replace(frame, signature=signer.sign(signing_bytes(frame)))


def check_signature(frame: Signed, node_key: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(node_key).verify(frame.signature, signing_bytes(frame))
    except (InvalidSignature, ValueError):
        raise FrameAuthError(
            f"{frame.__struct_config__.tag}: node key signature does not verify"
        ) from None
