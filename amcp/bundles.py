"""Signed policy bundles: a policy signed by the cloud's Ed25519 node key, carried as a CRDT
store row in the ``policies`` namespace (docs/policy-language.md, "Bundles").

A row's value is a :class:`SignedBundle`: ``body`` holds the exact bytes that were signed
(the msgpack encoding of a :class:`~amcp.wire.messages.PolicyBundle`), so verification never
re-encodes anything (as with envelopes, docs/wire.md §3)::

    signature = Ed25519.sign(cloud node key, b"cybernetic policy bundle v1\\x00" || body)

:func:`verify` checks, in order: the row decodes (``malformed``), the key is known and still
counts (``unknown_key``), the signature (``bad_signature``), then the body decodes and makes
sense (``malformed``) and has not expired (``expired``). Versions and the wasm itself are the
gateway's to judge (``older_version``, ``invalid_wasm``): see ``gateway.policy_bundles``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Literal

import msgspec

from amcp.crypto.keyring import Keyring
from amcp.crypto.keys import ED25519, Signer
from amcp.wire.messages import PolicyBundle

NAMESPACE = "policies"
"""Where the cloud writes the current bundle of each target (synced down, cloud-owned)."""
HISTORY_NAMESPACE = "policies.history"
"""Every bundle the cloud signed, by name and version, for rollback (the cloud's alone: no
sync rule names it, so it is never sent)."""
DOMAIN = b"cybernetic policy bundle v1\x00"
"""Prefix of the signed bytes: a bundle signature can never pass for another signature."""
MAX_ROW_BYTES = 8 * 1024 * 1024
MAX_NAME = 128
EVERY_ZONE = "*"
"""How a key names the every-zone target (a zone is never ``*``)."""

Reason = Literal[
    "malformed", "unknown_key", "bad_signature", "expired", "older_version", "invalid_wasm"
]
REASONS: tuple[Reason, ...] = (
    "malformed",
    "unknown_key",
    "bad_signature",
    "expired",
    "older_version",
    "invalid_wasm",
)


class BundleRefusedError(Exception):
    """A bundle that must not be applied, with the reason (one of :data:`REASONS`)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


class SignedBundle(msgspec.Struct, frozen=True):
    """The store row: the signed bytes, which key signed them, and the signature."""

    body: bytes
    key_id: str
    signature: bytes


_row_decoder = msgspec.msgpack.Decoder(SignedBundle)
_body_decoder = msgspec.msgpack.Decoder(PolicyBundle)
_encoder = msgspec.msgpack.Encoder()


def bundle_key(name: str, zone: str) -> str:
    """The row key of a bundle's target: ``name@zone`` (``name@*`` for every zone)."""
    return f"{name}@{zone or EVERY_ZONE}"


def history_key(name: str, version: int) -> str:
    """The row key of a bundle in :data:`HISTORY_NAMESPACE` (sorts by version)."""
    return f"{name}/{version:012d}"


def applies_to(bundle: PolicyBundle, zone: str) -> bool:
    """Whether a gateway of ``zone`` applies ``bundle``: its own zone's or every zone's."""
    return bundle.zone in {"", zone}


def sign(bundle: PolicyBundle, signer: Signer) -> bytes:
    """The store row value of ``bundle`` signed by ``signer`` (the cloud's node key)."""
    check(bundle)
    body = _encoder.encode(bundle)
    row = SignedBundle(body, signer.key_id, signer.sign(DOMAIN + body))
    return _encoder.encode(row)


def check(bundle: PolicyBundle) -> None:
    """Refuse (``malformed``) a bundle no gateway could apply, whoever signed it."""
    problems = []
    if not bundle.name or len(bundle.name) > MAX_NAME or "@" in bundle.name or "/" in bundle.name:
        problems.append(f"name {bundle.name[:MAX_NAME]!r} (1-{MAX_NAME} chars, no @ or /)")
    if bundle.version < 1:
        problems.append(f"version {bundle.version} (must be >= 1)")
    if bundle.zone == EVERY_ZONE:
        problems.append('zone "*" (every zone is "")')
    if not bundle.body and not bundle.source:
        problems.append("neither wasm nor source")
    if problems:
        raise BundleRefusedError("malformed", "; ".join(problems))


def decode(data: bytes) -> tuple[SignedBundle, PolicyBundle]:
    """The row and its body, **unverified** (for listing; gateways use :func:`verify`)."""
    if len(data) > MAX_ROW_BYTES:
        raise BundleRefusedError("malformed", f"{len(data)} bytes, more than {MAX_ROW_BYTES}")
    try:
        row = _row_decoder.decode(data)
        bundle = _body_decoder.decode(row.body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise BundleRefusedError("malformed", f"not a signed policy bundle: {exc}") from None
    check(bundle)
    return row, bundle


def verify(data: bytes, keyring: Keyring, now_ms: int, *, expiry: bool = True) -> PolicyBundle:
    """The bundle in a store row, once its signature verified under an Ed25519 key of
    ``keyring`` that still counts at ``now_ms`` and (``expiry``) it has not expired; else
    :class:`BundleRefusedError`."""
    if len(data) > MAX_ROW_BYTES:
        raise BundleRefusedError("malformed", f"{len(data)} bytes, more than {MAX_ROW_BYTES}")
    try:
        row = _row_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise BundleRefusedError("malformed", f"not a signed policy bundle: {exc}") from None
    found = keyring.get(row.key_id)
    if found is None:
        raise BundleRefusedError("unknown_key", f"signed by {row.key_id[:40]!r}, not a cloud key")
    entry, check_signature = found
    if entry.alg != ED25519:  # a link's HMAC key never signs policies
        raise BundleRefusedError("unknown_key", f"{row.key_id} is not an Ed25519 node key")
    status = entry.status(now_ms)
    if status not in {"active", "overlap"}:
        raise BundleRefusedError("unknown_key", f"signed by {row.key_id}, a {status} key")
    if not check_signature(row.signature, DOMAIN + row.body):
        raise BundleRefusedError("bad_signature", f"signature by {row.key_id} does not verify")
    try:
        bundle = _body_decoder.decode(row.body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise BundleRefusedError("malformed", f"signed body does not decode: {exc}") from None
    check(bundle)
    if expiry:
        check_expiry(bundle, now_ms)
    return bundle


def check_expiry(bundle: PolicyBundle, now_ms: int) -> None:
    """Refuse (``expired``) a bundle whose expiry is not after ``now_ms``."""
    if bundle.expires_ms <= now_ms:
        raise BundleRefusedError(
            "expired",
            f"{bundle.name} version {bundle.version} expired {now_ms - bundle.expires_ms} ms ago",
        )


def digest(data: bytes) -> str:
    """A short identity of a row value (which bundle, exactly)."""
    return hashlib.sha256(data).hexdigest()[:16]


def rows_digest(items: Mapping[str, bytes]) -> str:
    """A digest of a namespace's rows (the same on both sides of a control socket)."""
    h = hashlib.sha256()
    for key in sorted(items):
        value = items[key]
        h.update(len(key).to_bytes(4, "big") + key.encode())
        h.update(len(value).to_bytes(4, "big") + value)
    return h.hexdigest()
