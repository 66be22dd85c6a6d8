"""The gateway's side of enrolment and renewal: from a bootstrap token to a trusted link.

:func:`enrol` runs once, at first contact, with the one-time token the operator issued: it
makes the gateway's Ed25519 node key (if it has none) and a fresh TLS key, sends the node key,
a CSR and its half of the key agreement, and writes what comes back. :func:`renew` later asks
for a new certificate and/or a new link epoch over the mutual-TLS link, signed by the node key.

Files in the enrolment directory (0700; secrets 0600)::

    keys/              the node's Ed25519 keys (amcp.crypto.keystore layout)
    tls/client.pem     TLS private key + client certificate in one file, replaced atomically,
                       so a reconnect never sees a key from one renewal and a cert from another
    tls/ca.pem         the fleet's trust bundle (verifies the cloud broker)
    link.secret        the link secret from the key agreement (hex), what amcp.link reads
    enrolment.json     cloud id, cloud node key, link epoch and when things were renewed

Nothing secret is logged: log lines carry the gateway id, the token id and epochs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from amcp.crypto.agreement import AgreementError, GatewayAgreement
from amcp.crypto.keys import Ed25519Signer
from amcp.crypto.keystore import KeyStore
from amcp.crypto.pki import key_pem, load_cert, make_csr, new_tls_key, write_secret_file
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import LinkLostError, LinkRefusedError, SessionSpec, connect_once
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.wire import enrol as wire
from amcp.wire import topics

log = logging.getLogger(__name__)


class EnrolmentError(Exception):
    """Enrolment or renewal did not complete; the message says why (never a secret)."""


class EnrolmentRefusedError(EnrolmentError):
    """The cloud answered no. ``authenticated`` is False when the answer could not be checked
    (it came before the cloud recognised the token, or from someone else)."""

    def __init__(self, reason: str, *, authenticated: bool) -> None:
        super().__init__(f"enrolment refused: {reason}")
        self.reason = reason
        self.authenticated = authenticated


class EnrolmentState(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    gateway: str
    cloud: str
    cloud_key: bytes
    epoch: int
    link_ms: int
    cert_not_after_ms: int
    cert_ms: int


@dataclass(frozen=True)
class EnrolPaths:
    directory: Path

    @property
    def keys(self) -> Path:
        return self.directory / "keys"

    @property
    def client_pem(self) -> Path:
        return self.directory / "tls" / "client.pem"

    @property
    def trust_bundle(self) -> Path:
        return self.directory / "tls" / "ca.pem"

    @property
    def link_secret(self) -> Path:
        return self.directory / "link.secret"

    @property
    def state(self) -> Path:
        return self.directory / "enrolment.json"

    def load(self) -> EnrolmentState:
        try:
            return msgspec.json.decode(self.state.read_bytes(), type=EnrolmentState)
        except FileNotFoundError:
            raise EnrolmentError(f"{self.directory} holds no enrolment (run enrol)") from None

    def tls_link(self, base: BrokerLink) -> BrokerLink:
        """``base`` (host, port) with this enrolment's certificate and trust bundle."""
        return msgspec.structs.replace(
            base,
            username="",
            password="",
            password_file="",
            ca_file=str(self.trust_bundle),
            cert_file=str(self.client_pem),
            key_file="",
        )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _node_signer(paths: EnrolPaths, gateway: str, owner: str | None) -> Ed25519Signer:
    paths.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = KeyStore(paths.keys)
    if not store.exists():
        signer = store.generate(gateway)
        if owner is not None:  # the key store writes as the caller: hand it to the service
            entry = pwd.getpwnam(owner)
            for path in [paths.directory, paths.keys, *paths.keys.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
        return signer
    signer = store.signer()
    if signer.owner != gateway:
        raise EnrolmentError(
            f"{paths.keys} holds the identity of {signer.owner!r}, not {gateway!r}"
        )
    return signer


async def _exchange(
    link: BrokerLink, gateway: str, request: bytes, *, request_id: str, within_s: float, prefix: str
) -> wire.Frame:
    """Publish ``request`` (again every few seconds) until the answer to ``request_id`` comes."""
    spec = SessionSpec(
        f"{gateway}-enrol-{request_id[:8]}", (topics.enrol_response(gateway, prefix),)
    )
    try:
        async with asyncio.timeout(within_s), connect_once(MqttTransport(), link, spec) as client:
            while True:
                await client.publish(topics.enrol_request(gateway, prefix), request, qos=1)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        async for message in client.messages():
                            try:
                                frame = wire.decode(message.payload)
                            except wire.EnrolError:
                                continue
                            if getattr(frame, "request_id", None) == request_id:
                                return frame
    except TimeoutError:
        raise EnrolmentError(f"no answer from the cloud within {within_s}s") from None
    except LinkRefusedError as exc:
        raise EnrolmentError(f"the cloud broker refused the login: {exc}") from None
    except LinkLostError as exc:
        raise EnrolmentError(f"cannot reach the cloud broker: {exc}") from None


def _save(
    paths: EnrolPaths,
    state: EnrolmentState,
    *,
    tls: tuple[bytes, bytes, bytes] | None,
    secret: bytes | None,
    owner: str | None,
) -> None:
    """Write what an answer brought; the state file last, so it never claims more."""
    if tls is not None:
        key, cert, bundle = tls
        write_secret_file(paths.trust_bundle, bundle, owner=owner)
        write_secret_file(paths.client_pem, key + cert, owner=owner)
    if secret is not None:
        write_secret_file(paths.link_secret, secret.hex().encode(), owner=owner)
    write_secret_file(paths.state, msgspec.json.encode(state), owner=owner)


async def enrol(
    link: BrokerLink,
    token_text: str,
    gateway: str,
    directory: Path,
    *,
    cloud: str = "cloud",
    epoch: int = 1,
    within_s: float = 30.0,
    owner: str | None = None,
    prefix: str = wire.TOPIC_PREFIX,
) -> EnrolmentState:
    """First contact: prove the token and the node key, receive certificate and trust.

    ``cloud`` is the cloud's node id (``uplink.cloud_id``): the key agreement is bound to it.
    """
    token = wire.BootstrapToken.parse(token_text)
    paths = EnrolPaths(directory)
    signer = await asyncio.to_thread(_node_signer, paths, gateway, owner)
    tls_key = new_tls_key()
    agreement = GatewayAgreement(signer, cloud=cloud, epoch=epoch)
    request = wire.EnrolRequest(
        gateway=gateway,
        token_id=token.token_id,
        request_id=wire.new_request_id(),
        ts_ms=_now_ms(),
        node_key=signer.entry().material,
        csr=make_csr(tls_key, gateway),
        epoch=epoch,
        ephemeral=agreement.offer.ephemeral,
        agreement_sig=agreement.offer.signature,
    )
    request = wire.with_mac(wire.with_signature(request, signer), token.mac_key())
    log.info("enrolling", extra={"gateway": gateway, "token_id": token.token_id})
    frame = await _exchange(
        link,
        gateway,
        wire.encode(request),
        request_id=request.request_id,
        within_s=within_s,
        prefix=prefix,
    )
    if not isinstance(frame, wire.EnrolResponse):
        raise EnrolmentError(f"unexpected answer {type(frame).__name__}")
    try:
        wire.check_mac(frame, token.mac_key())
    except wire.FrameAuthError:
        if not frame.ok:
            raise EnrolmentRefusedError(frame.reason, authenticated=False) from None
        raise EnrolmentError("the answer is not from the cloud that issued the token") from None
    if not frame.ok:
        raise EnrolmentRefusedError(frame.reason, authenticated=True)
    if frame.cloud != cloud:
        raise EnrolmentError(f"the cloud calls itself {frame.cloud!r}, expected {cloud!r}")
    try:
        secret = agreement.finish(frame.ephemeral, frame.agreement_sig, frame.cloud_key)
    except AgreementError as exc:
        raise EnrolmentError(str(exc)) from None
    cert = load_cert(frame.certificate)
    now = _now_ms()
    state = EnrolmentState(
        gateway=gateway,
        cloud=frame.cloud,
        cloud_key=frame.cloud_key,
        epoch=frame.epoch,
        link_ms=now,
        cert_not_after_ms=int(cert.not_valid_after_utc.timestamp() * 1000),
        cert_ms=now,
    )
    await asyncio.to_thread(
        _save,
        paths,
        state,
        tls=(key_pem(tls_key), frame.certificate, frame.trust_bundle),
        secret=secret,
        owner=owner,
    )
    log.info("enrolled", extra={"gateway": gateway, "cloud": frame.cloud, "epoch": frame.epoch})
    return state


async def renew(
    link: BrokerLink,
    directory: Path,
    *,
    certificate: bool = True,
    link_secret: bool = True,
    within_s: float = 30.0,
    owner: str | None = None,
    prefix: str = wire.TOPIC_PREFIX,
) -> EnrolmentState:
    """A new certificate and/or a new link epoch, authenticated by the node keys.

    ``link`` is normally :meth:`EnrolPaths.tls_link`: the current certificate admits us.
    The old certificate stays valid until it expires, so a live connection is never dropped.
    """
    paths = EnrolPaths(directory)
    state = paths.load()
    signer = await asyncio.to_thread(KeyStore(paths.keys).signer)
    epoch = state.epoch + 1 if link_secret else state.epoch
    agreement = GatewayAgreement(signer, cloud=state.cloud, epoch=epoch) if link_secret else None
    tls_key = new_tls_key() if certificate else None
    request = wire.with_signature(
        wire.RenewRequest(
            gateway=state.gateway,
            request_id=wire.new_request_id(),
            ts_ms=_now_ms(),
            epoch=epoch,
            ephemeral=agreement.offer.ephemeral if agreement else b"",
            agreement_sig=agreement.offer.signature if agreement else b"",
            csr=make_csr(tls_key, state.gateway) if tls_key else b"",
        ),
        signer,
    )
    frame = await _exchange(
        link,
        state.gateway,
        wire.encode(request),
        request_id=request.request_id,
        within_s=within_s,
        prefix=prefix,
    )
    if not isinstance(frame, wire.RenewResponse):
        raise EnrolmentError(f"unexpected answer {type(frame).__name__}")
    try:
        wire.check_signature(frame, state.cloud_key)
    except wire.FrameAuthError as exc:
        raise EnrolmentError(str(exc)) from None
    if not frame.ok:
        raise EnrolmentRefusedError(frame.reason, authenticated=True)
    now = _now_ms()
    tls = None
    if tls_key is not None and frame.certificate:
        cert = load_cert(frame.certificate)
        tls = (key_pem(tls_key), frame.certificate, frame.trust_bundle)
        state = msgspec.structs.replace(
            state,
            cert_not_after_ms=int(cert.not_valid_after_utc.timestamp() * 1000),
            cert_ms=now,
        )
    secret = None
    if agreement is not None:
        try:
            secret = agreement.finish(frame.ephemeral, frame.agreement_sig, state.cloud_key)
        except AgreementError as exc:
            raise EnrolmentError(str(exc)) from None
        state = msgspec.structs.replace(state, epoch=frame.epoch, link_ms=now)
    await asyncio.to_thread(_save, paths, state, tls=tls, secret=secret, owner=owner)
    log.info("renewed", extra={"gateway": state.gateway, "epoch": state.epoch})
    return state


@dataclass(frozen=True)
class RenewalPolicy:
    """Renew the certificate when less than ``cert_before_s`` of it is left, and the link
    secret every ``link_every_s`` (each time a new epoch)."""

    cert_before_s: float = 7 * 86400.0
    link_every_s: float = 86400.0
    check_every_s: float = 600.0

    def due(self, state: EnrolmentState, now_ms: int) -> tuple[bool, bool]:
        cert = state.cert_not_after_ms - now_ms <= self.cert_before_s * 1000
        link = now_ms - state.link_ms >= self.link_every_s * 1000
        return cert, link


class Renewer:
    """A supervisor child that renews on schedule; ``on_renewed`` lets the daemon reload."""

    def __init__(
        self,
        base: BrokerLink,
        directory: Path,
        policy: RenewalPolicy,
        *,
        on_renewed: Callable[[EnrolmentState], None] | None = None,
    ) -> None:
        self.paths = EnrolPaths(directory)
        self.base = base
        self.policy = policy
        self.on_renewed = on_renewed

    async def run(self, ctx: ChildContext) -> None:
        ctx.ready()
        while True:
            state = await asyncio.to_thread(self.paths.load)
            cert, link = self.policy.due(state, _now_ms())
            if cert or link:
                try:
                    state = await renew(
                        self.paths.tls_link(self.base),
                        self.paths.directory,
                        certificate=cert,
                        link_secret=link,
                    )
                except EnrolmentError as exc:
                    log.warning("renewal failed, will retry", extra={"error": str(exc)})
                else:
                    if self.on_renewed is not None:
                        self.on_renewed(state)
            await asyncio.sleep(self.policy.check_every_s)
