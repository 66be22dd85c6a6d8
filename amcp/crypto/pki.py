"""The fleet's certificate authority: TLS certificates for gateways and the cloud broker.

One root per fleet, made by ``cybernetic pki init`` on the cloud. It signs the client
certificate each gateway presents on the mutual-TLS cloud link (its common name is the gateway
id, which the broker takes as the MQTT username), the cloud broker's server certificate, and a
certificate revocation list (CRL) that the broker reloads on SIGHUP.

TLS keys are ECDSA P-256, the curve every TLS stack (and Mosquitto under OpenSSL 1.1 or 3)
accepts for client and server certificates; node identities for envelopes stay Ed25519
(:mod:`amcp.crypto.keys`). Layout of the CA directory (0700, every file 0600)::

    ca.key       the root's private key (PKCS#8 PEM)
    ca.pem       the root certificate: the fleet's trust bundle
    crl.pem      revoked serial numbers, signed by the root
    issued.json  every certificate issued: serial, subject, kind, validity, revocation
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import pwd
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CertKind = Literal["client", "server"]
CRL_VALIDITY = dt.timedelta(days=30)
"""OpenSSL refuses every client once the CRL's next update is past: rewrite it well before."""
_BACKDATE = dt.timedelta(minutes=5)
"""Validity starts a little in the past so a peer with a slightly slow clock accepts it."""


class PkiError(Exception):
    """The CA directory is missing or inconsistent, or a request cannot be signed."""


class IssuedCert(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    serial: int
    subject: str
    kind: CertKind
    not_before_ms: int
    not_after_ms: int
    revoked_ms: int | None = None


class _Issued(msgspec.Struct, forbid_unknown_fields=True):
    certificates: list[IssuedCert]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def write_secret_file(path: Path, data: bytes, *, owner: str | None = None) -> None:
    """Write ``data`` atomically, mode 0600, owned by ``owner`` (the service user) if given.

    The file is created 0600 before a byte is written, so a secret is never readable by others
    even for an instant; ``owner`` matters when root runs the command for a service account
    (folders made for the file are the owner's too). Without ``owner``, root rewriting an
    existing file keeps its owner (a CA's register stays the cloud user's).
    """
    ids = None if owner is None else (pwd.getpwnam(owner).pw_uid, pwd.getpwnam(owner).pw_gid)
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if ids is not None:
        for made in missing:  # the folders made here belong to the service too
            os.chown(made, *ids)
    elif os.geteuid() == 0 and path.exists():
        st = path.stat()  # root rewriting a service's file: it stays the service's
        ids = (st.st_uid, st.st_gid)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o600)
        if ids is not None:
            os.fchown(fd, *ids)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("TLS private key is not an EC key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    """A PEM certificate signing request for ``common_name`` (the gateway id)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}") from None


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def not_after_ms(cert: x509.Certificate) -> int:
    return _ms(cert.not_valid_after_utc)


class FleetCA:
    """The root key and the record of what it signed. Methods are blocking (file I/O)."""

    def __init__(self, directory: Path, *, owner: str | None = None) -> None:
        self.directory = directory
        self.owner = owner

    # -- paths ------------------------------------------------------------------------------
    @property
    def key_path(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def issued_path(self) -> Path:
        return self.directory / "issued.json"

    def exists(self) -> bool:
        return self.key_path.exists() and self.cert_path.exists()

    # -- creation ---------------------------------------------------------------------------
    def init(self, *, name: str = "Cybernetic fleet root", valid_days: int = 3650) -> None:
        """Create the root key, its self-signed certificate and an empty CRL."""
        if self.exists():
            raise PkiError(f"{self.directory} already holds a fleet CA")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)
        key = new_tls_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cybernetic Edge"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        write_secret_file(self.key_path, key_pem(key), owner=self.owner)
        write_secret_file(
            self.cert_path, cert.public_bytes(serialization.Encoding.PEM), owner=self.owner
        )
        self._save_issued([])
        self.write_crl()

    # -- loading ----------------------------------------------------------------------------
    def _key(self) -> ec.EllipticCurvePrivateKey:
        try:
            return load_key(self.key_path.read_bytes())
        except FileNotFoundError:
            raise PkiError(f"no fleet CA in {self.directory} (run `cybernetic pki init`)") from None

    def certificate(self) -> x509.Certificate:
        try:
            return load_cert(self.cert_path.read_bytes())
        except FileNotFoundError:
            raise PkiError(f"no fleet CA in {self.directory} (run `cybernetic pki init`)") from None

    def trust_bundle(self) -> bytes:
        """The PEM root certificate a gateway trusts the cloud broker by."""
        return self.certificate().public_bytes(serialization.Encoding.PEM)

    def issued(self) -> list[IssuedCert]:
        try:
            return msgspec.json.decode(self.issued_path.read_bytes(), type=_Issued).certificates
        except FileNotFoundError:
            return []
        except msgspec.DecodeError as exc:
            raise PkiError(f"{self.issued_path}: {exc}") from None

    def _save_issued(self, certs: list[IssuedCert]) -> None:
        data = msgspec.json.format(msgspec.json.encode(_Issued(certs)), indent=2)
        write_secret_file(self.issued_path, data, owner=self.owner)

    # -- signing ----------------------------------------------------------------------------
    def _sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        subject: str,
        kind: CertKind,
        valid_s: float,
        names: list[x509.GeneralName],
    ) -> x509.Certificate:
        ca_key = self._key()
        ca_cert = self.certificate()
        now = _now()
        not_after = min(now + dt.timedelta(seconds=valid_s), ca_cert.not_valid_after_utc)
        usage = (
            ExtendedKeyUsageOID.CLIENT_AUTH if kind == "client" else ExtendedKeyUsageOID.SERVER_AUTH
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        record = IssuedCert(
            serial=cert.serial_number,
            subject=subject,
            kind=kind,
            not_before_ms=_ms(cert.not_valid_before_utc),
            not_after_ms=_ms(cert.not_valid_after_utc),
        )
        self._save_issued([*self.issued(), record])
        return cert

    def issue_client(self, csr_pem: bytes, *, subject: str, valid_s: float) -> bytes:
        """Sign a gateway's CSR; the certificate names ``subject`` whatever the CSR asked for.

        The caller has already authenticated the gateway (bootstrap token or current node key),
        so the CSR's own subject is ignored: a gateway cannot ask for another gateway's name.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PkiError(f"malformed certificate signing request: {exc}") from None
        if not csr.is_signature_valid:
            raise PkiError("certificate signing request signature does not verify")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise PkiError("certificate signing request key must be EC (P-256)")
        cert = self._sign(public, subject, "client", valid_s, [])
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_server(self, hostnames: list[str], *, valid_s: float) -> tuple[bytes, bytes]:
        """A key and certificate for a broker reachable as ``hostnames`` (names or IPs)."""
        names: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = new_tls_key()
        cert = self._sign(key.public_key(), hostnames[0], "server", valid_s, names)
        return key_pem(key), cert.public_bytes(serialization.Encoding.PEM)

    # -- revocation -------------------------------------------------------------------------
    def revoke(self, subject: str) -> list[int]:
        """Revoke every unrevoked certificate of ``subject``; rewrites the CRL. Returns serials."""
        now = _ms(_now())
        revoked: list[int] = []
        certs: list[IssuedCert] = []
        for c in self.issued():
            if c.subject == subject and c.revoked_ms is None:
                c = msgspec.structs.replace(c, revoked_ms=now)  # noqa: PLW2901
                revoked.append(c.serial)
            certs.append(c)
        self._save_issued(certs)
        self.write_crl()
        return revoked

    def revoke_serial(self, serial: int) -> None:
        now = _ms(_now())
        certs = self.issued()
        if not any(c.serial == serial for c in certs):
            raise PkiError(f"no certificate with serial {serial:x} was issued by this CA")
        certs = [
            msgspec.structs.replace(c, revoked_ms=now)
            if c.serial == serial and c.revoked_ms is None
            else c
            for c in certs
        ]
        self._save_issued(certs)
        self.write_crl()

    def crl(self) -> x509.CertificateRevocationList | None:
        """The CRL now on disk; None when it is missing, unreadable or not signed by this root."""
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (OSError, ValueError):
            return None
        public = self.certificate().public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public):
            return None
        return crl

    def crl_pem(
        self,
        *,
        validity: dt.timedelta = CRL_VALIDITY,
        keep: Iterable[x509.RevokedCertificate] = (),
    ) -> bytes:
        """The CRL of every revocation in ``issued.json``, valid for ``validity``; ``keep``
        adds entries of another CRL whose serials ``issued.json`` does not list as revoked."""
        ca_key = self._key()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate().subject)
            .last_update(now - _BACKDATE)
            .next_update(now + validity)
        )
        listed: set[int] = set()
        for c in self.issued():
            if c.revoked_ms is None:
                continue
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(c.serial)
                .revocation_date(dt.datetime.fromtimestamp(c.revoked_ms / 1000, dt.UTC))
                .build()
            )
            builder = builder.add_revoked_certificate(revoked)
            listed.add(c.serial)
        for entry in keep:
            if entry.serial_number not in listed:
                builder = builder.add_revoked_certificate(entry)
                listed.add(entry.serial_number)
        crl = builder.sign(ca_key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    @contextlib.contextmanager
    def _crl_lock(self) -> Iterator[None]:
        """One CRL writer at a time, across processes (the daemon's renewal, ``pki revoke``):
        a re-signing that read ``issued.json`` before a revocation cannot overwrite its CRL."""
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def write_crl(
        self, *, validity: dt.timedelta = CRL_VALIDITY, keep_listed: bool = False
    ) -> Path:
        """Re-sign the CRL (also needed every < 30 days even when nothing was revoked).

        ``keep_listed``: the new CRL also lists every serial the current one lists, so a
        scheduled re-signing never un-revokes a certificate even if ``issued.json`` lost it.
        The file is replaced atomically: a broker reloading it reads the old or the new one.
        """
        with self._crl_lock():
            current = self.crl() if keep_listed else None
            pem = self.crl_pem(validity=validity, keep=current if current is not None else ())
            write_secret_file(self.crl_path, pem, owner=self.owner)
        return self.crl_path
