"""OPC-UA application certificates from the fleet's CA (:class:`amcp.crypto.pki.FleetCA`).

Basic256Sha256 needs RSA keys (2048 bits here) and a certificate that names the application
URI in its subjectAltName; the fleet root (ECDSA P-256) signs it, so a machine that trusts the
fleet root trusts every gateway's bridge. ``cybernetic bridge cert`` writes one per gateway.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from amcp.crypto.pki import FleetCA, PkiError, load_key


def application_uri_for(gateway: str) -> str:
    return f"urn:cybernetic:gateway:{gateway}:bridge"


def issue_opcua(
    ca: FleetCA, application_uri: str, hostnames: list[str], *, valid_s: float = 365 * 86400
) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) for an OPC-UA application, signed by the fleet root."""
    try:
        ca_key = load_key(ca.key_path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"no fleet CA in {ca.directory} (run `cybernetic pki init`)") from None
    ca_cert = ca.certificate()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, application_uri)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(seconds=valid_s), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)
