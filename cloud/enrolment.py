"""The cloud's side of enrolment: bootstrap tokens, the gateway register, certificates.

- Tokens are one-time and expiring. At rest the store keeps only ``HKDF(token secret)`` (the
  MAC key, from which the token cannot be recovered) and the public token id. Consumption is
  one conditional ``UPDATE``, so two requests racing for one token cannot both win. A gateway
  that lost the answer may resend the *same* request and gets the same answer; any other
  request with a used token is refused.
- An enrolled gateway is recorded with its Ed25519 node key, its certificate serial and its
  link epoch; its link secret (from the key agreement) is written to ``links_dir/<gateway>``
  (0600), the file :func:`amcp.link.secrets_in_dir` reads.
- Revocation revokes every certificate of the gateway (new CRL: the broker refuses it after a
  reload), marks it revoked here and deletes its link secret (the envelope layer refuses it).

Everything here is blocking SQLite and signing: async callers use :meth:`Enrolment.serve`,
which runs each request in a worker thread. Log lines name gateways and token ids, never a
token, a key or a secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pwd
import threading
from collections.abc import Callable
from pathlib import Path

from amcp.crypto.agreement import AgreementError, Offer, cloud_answer
from amcp.crypto.keys import Ed25519Signer
from amcp.crypto.keystore import KeyStore
from amcp.crypto.pki import FleetCA, PkiError, load_cert, write_secret_file
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import Link, Session, SessionSpec, Transport, connect_once
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import ChildContext
from amcp.wire import enrol as wire
from amcp.wire import topics
from cloud.enrolment_store import (
    RESERVED_IDS,
    EnrolmentStore,
    GatewayRecord,
    TokenRecord,
    now_ms,
    valid_gateway_id,
)

__all__ = [
    "RESERVED_IDS",
    "Enrolment",
    "EnrolmentStore",
    "GatewayRecord",
    "TokenRecord",
    "disconnect_client",
    "init_pki",
    "open_enrolment",
    "valid_gateway_id",
]

log = logging.getLogger(__name__)


class Enrolment:
    """Answers enrolment and renewal requests; issues tokens; revokes gateways."""

    def __init__(
        self,
        store: EnrolmentStore,
        ca: FleetCA,
        signer: Ed25519Signer,
        links_dir: Path,
        *,
        cert_valid_s: float = 30 * 86400.0,
        max_skew_s: float = 300.0,
        owner: str | None = None,
        on_revoke: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.ca = ca
        self.signer = signer
        self.cloud = signer.owner
        self.links_dir = links_dir
        self.cert_valid_s = cert_valid_s
        self.max_skew_ms = int(max_skew_s * 1000)
        self.owner = owner
        self.on_revoke = on_revoke
        self._lock = threading.Lock()

    # -- operator actions ---------------------------------------------------------------------
    def issue_token(self, *, expires_s: float, gateway: str | None = None) -> wire.BootstrapToken:
        """A new one-time token; print ``token.text()`` once, it is not stored."""
        if gateway is not None and not valid_gateway_id(gateway, self.cloud):
            raise ValueError(f"invalid gateway id {gateway!r}")
        token = wire.BootstrapToken.generate()
        self.store.add_token(token, gateway, now_ms() + int(expires_s * 1000))
        log.info("bootstrap token issued", extra={"token_id": token.token_id, "gateway": gateway})
        return token

    def revoke(self, gateway: str) -> list[int]:
        """Refuse ``gateway`` from now on: CRL, register, link secret. Returns revoked serials."""
        serials = self.ca.revoke(gateway)
        self.store.mark_revoked(gateway, now_ms())
        (self.links_dir / gateway).unlink(missing_ok=True)
        log.warning("gateway revoked", extra={"gateway": gateway, "certificates": len(serials)})
        if self.on_revoke is not None:
            self.on_revoke(gateway)
        return serials

    def link_secret(self, gateway: str) -> bytes | None:
        """The current link secret of an active gateway (a lookup for ``CloudLinks``)."""
        rec = self.store.gateway(gateway)
        path = self.links_dir / gateway
        if rec is None or not rec.active or not path.is_file():
            return None
        return bytes.fromhex(path.read_text().strip())

    # -- requests -----------------------------------------------------------------------------
    def handle(self, data: bytes, topic_gateway: str) -> bytes | None:
        """Answer one request frame (blocking); None when there is nothing to answer."""
        try:
            frame = wire.decode(data)
        except wire.EnrolError as exc:
            log.warning(
                "enrolment frame refused", extra={"gateway": topic_gateway, "error": str(exc)}
            )
            return None
        if not isinstance(frame, wire.EnrolRequest | wire.RenewRequest):
            return None
        if frame.gateway != topic_gateway:
            log.warning("enrolment frame names another gateway", extra={"topic": topic_gateway})
            return None
        with self._lock:  # one request at a time: token use and epochs are read-modify-write
            if isinstance(frame, wire.EnrolRequest):
                return wire.encode(self._enrol(frame))
            return wire.encode(self._renew(frame))

    def _refuse(
        self, req: wire.EnrolRequest, reason: str, mac_key: bytes | None
    ) -> wire.EnrolResponse:
        log.warning(
            "enrolment refused",
            extra={"gateway": req.gateway, "token_id": req.token_id, "reason": reason},
        )
        resp = wire.EnrolResponse(
            gateway=req.gateway, request_id=req.request_id, ok=False, reason=reason
        )
        return wire.with_mac(resp, mac_key) if mac_key is not None else resp

    def _enrol(self, req: wire.EnrolRequest) -> wire.EnrolResponse:  # noqa: PLR0911, C901
        if not valid_gateway_id(req.gateway, self.cloud):
            return self._refuse(req, "gateway id is invalid or reserved", None)
        found = self.store.token(req.token_id)
        if found is None:
            return self._refuse(req, "unknown bootstrap token", None)
        token, mac_key, used_request, stored = found
        try:
            wire.check_mac(req, mac_key)
            wire.check_signature(req, req.node_key)
        except wire.FrameAuthError as exc:
            return self._refuse(req, str(exc), None)
        if token.used_ms is not None:
            if used_request == req.request_id and stored is not None:
                resp = wire.decode(stored)  # the same request again: the same answer
                assert isinstance(resp, wire.EnrolResponse)
                return resp
            return self._refuse(req, "bootstrap token already used", mac_key)
        now = now_ms()
        if token.expires_ms <= now:
            return self._refuse(req, "bootstrap token expired", mac_key)
        if token.gateway is not None and token.gateway != req.gateway:
            return self._refuse(req, "bootstrap token was issued for another gateway", mac_key)
        existing = self.store.gateway(req.gateway)
        if existing is not None and existing.active and token.gateway is None:
            return self._refuse(
                req, "gateway already enrolled (re-enrol with a token issued for it)", mac_key
            )
        if abs(req.ts_ms - now) > self.max_skew_ms or req.epoch < 1:
            return self._refuse(req, "request timestamp or epoch out of range", mac_key)
        try:
            answer = cloud_answer(
                self.signer,
                gateway=req.gateway,
                epoch=req.epoch,
                offer=Offer(req.ephemeral, req.agreement_sig),
                gateway_key=req.node_key,
            )
            cert_pem = self.ca.issue_client(req.csr, subject=req.gateway, valid_s=self.cert_valid_s)
        except (AgreementError, PkiError) as exc:
            return self._refuse(req, str(exc), mac_key)
        if not self.store.consume(req.token_id, req.request_id, now):
            return self._refuse(req, "bootstrap token already used", mac_key)
        if existing is not None:
            self.ca.revoke(req.gateway)  # re-enrolment replaces the old certificates
        cert = load_cert(cert_pem)
        write_secret_file(
            self.links_dir / req.gateway, answer.secret.hex().encode(), owner=self.owner
        )
        self.store.put_gateway(
            GatewayRecord(
                gateway=req.gateway,
                node_key=req.node_key,
                cert_serial=f"{cert.serial_number:x}",
                cert_not_after_ms=int(cert.not_valid_after_utc.timestamp() * 1000),
                epoch=req.epoch,
                link_ms=now,
                enrolled_ms=now,
                revoked_ms=None,
            )
        )
        resp = wire.with_mac(
            wire.EnrolResponse(
                gateway=req.gateway,
                request_id=req.request_id,
                ok=True,
                cloud=self.cloud,
                cloud_key=self.signer.entry().material,
                certificate=cert_pem,
                trust_bundle=self.ca.trust_bundle(),
                epoch=req.epoch,
                ephemeral=answer.ephemeral,
                agreement_sig=answer.signature,
            ),
            mac_key,
        )
        self.store.save_response(req.token_id, wire.encode(resp))
        log.info("gateway enrolled", extra={"gateway": req.gateway, "token_id": req.token_id})
        return resp

    def _renew_refuse(self, req: wire.RenewRequest, reason: str) -> wire.RenewResponse:
        log.warning("renewal refused", extra={"gateway": req.gateway, "reason": reason})
        resp = wire.RenewResponse(
            gateway=req.gateway, request_id=req.request_id, ok=False, reason=reason
        )
        return wire.with_signature(resp, self.signer)

    def _renew(self, req: wire.RenewRequest) -> wire.RenewResponse:  # noqa: PLR0911
        rec = self.store.gateway(req.gateway)
        if rec is None or not rec.active:
            return self._renew_refuse(req, "gateway is not enrolled or was revoked")
        try:
            wire.check_signature(req, rec.node_key)
        except wire.FrameAuthError as exc:
            return self._renew_refuse(req, str(exc))
        last_id, last_resp = self.store.renewal(req.gateway)
        if last_id == req.request_id and last_resp is not None:
            resp = wire.decode(last_resp)
            assert isinstance(resp, wire.RenewResponse)
            return resp
        now = now_ms()
        if abs(req.ts_ms - now) > self.max_skew_ms:
            return self._renew_refuse(req, "request timestamp out of range")
        rekey = bool(req.ephemeral)
        if rekey and req.epoch <= rec.epoch:
            return self._renew_refuse(req, f"link epoch must move past {rec.epoch}")
        cert_pem = b""
        try:
            answer = (
                cloud_answer(
                    self.signer,
                    gateway=req.gateway,
                    epoch=req.epoch,
                    offer=Offer(req.ephemeral, req.agreement_sig),
                    gateway_key=rec.node_key,
                )
                if rekey
                else None
            )
            if req.csr:
                cert_pem = self.ca.issue_client(
                    req.csr, subject=req.gateway, valid_s=self.cert_valid_s
                )
        except (AgreementError, PkiError) as exc:
            return self._renew_refuse(req, str(exc))
        if cert_pem:
            cert = load_cert(cert_pem)
            rec = dataclasses.replace(
                rec,
                cert_serial=f"{cert.serial_number:x}",
                cert_not_after_ms=int(cert.not_valid_after_utc.timestamp() * 1000),
            )
        if answer is not None:
            write_secret_file(
                self.links_dir / req.gateway, answer.secret.hex().encode(), owner=self.owner
            )
            rec = dataclasses.replace(rec, epoch=req.epoch, link_ms=now)
        self.store.put_gateway(rec)
        resp = wire.with_signature(
            wire.RenewResponse(
                gateway=req.gateway,
                request_id=req.request_id,
                ok=True,
                certificate=cert_pem,
                trust_bundle=self.ca.trust_bundle(),
                epoch=rec.epoch,
                ephemeral=answer.ephemeral if answer else b"",
                agreement_sig=answer.signature if answer else b"",
            ),
            self.signer,
        )
        self.store.save_renewal(req.gateway, req.request_id, wire.encode(resp))
        log.info(
            "gateway renewed",
            extra={"gateway": req.gateway, "epoch": rec.epoch, "certificate": bool(cert_pem)},
        )
        return resp

    # -- MQTT -----------------------------------------------------------------------------------
    async def serve(
        self,
        link: BrokerLink,
        ctx: ChildContext,
        *,
        prefix: str = wire.TOPIC_PREFIX,
        transport: Transport | None = None,
    ) -> None:
        """Answer requests on ``{prefix}/+/request`` until cancelled (a supervisor child)."""
        session = Session(
            transport or MqttTransport(),
            link,
            SessionSpec(f"{self.cloud}-enrolment", (topics.enrol_request("+", prefix),)),
            name="enrolment",
        )

        async def answer(client: Link) -> None:
            async for message in client.messages():
                parts = message.topic.split("/")
                gateway = parts[-2] if len(parts) >= 2 else ""
                reply = await asyncio.to_thread(self.handle, message.payload, gateway)
                if reply is not None:
                    await client.publish(topics.enrol_response(gateway, prefix), reply, qos=1)

        await session.run(answer, on_connected=ctx.ready)


def init_pki(pki_dir: Path, *, cloud_id: str = "cloud", owner: str | None = None) -> FleetCA:
    """``cybernetic pki init``: the fleet root, the cloud's node key and an empty register.

    Layout: ``ca/`` (:class:`FleetCA`), ``node/`` (the cloud's Ed25519 keys), ``links/`` (one
    link secret per gateway) and ``enrolment.sqlite3``; all of it readable by ``owner`` only.
    """
    ca = FleetCA(pki_dir / "ca", owner=owner)
    ca.init()
    KeyStore(pki_dir / "node").generate(cloud_id)
    EnrolmentStore(pki_dir / "enrolment.sqlite3").close()
    (pki_dir / "links").mkdir(mode=0o700, exist_ok=True)
    pki_dir.chmod(0o700)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for path in [pki_dir, *pki_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return ca


def open_enrolment(
    pki_dir: Path,
    *,
    links_dir: Path | None = None,
    owner: str | None = None,
    cert_valid_s: float = 30 * 86400.0,
) -> Enrolment:
    """The enrolment service over a directory made by :func:`init_pki` (blocking)."""
    ca = FleetCA(pki_dir / "ca", owner=owner)
    if not ca.exists():
        raise PkiError(f"no fleet CA in {pki_dir} (run `cybernetic pki init`)")
    signer = KeyStore(pki_dir / "node").signer()
    store = EnrolmentStore(pki_dir / "enrolment.sqlite3")
    return Enrolment(
        store, ca, signer, links_dir or pki_dir / "links", cert_valid_s=cert_valid_s, owner=owner
    )


async def disconnect_client(link: BrokerLink, client_id: str) -> None:
    """Close another client's live session by connecting with its client id (MQTT takeover).

    A CRL reload stops new connections of a revoked gateway but not the one it has open; this
    closes that one, and its reconnect then fails the TLS handshake.
    """
    async with connect_once(MqttTransport(), link, SessionSpec(client_id)):
        pass
