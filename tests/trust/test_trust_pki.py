"""The fleet CA, the key agreement and the enrolment frames, without a broker."""

from __future__ import annotations

import contextlib
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import example, given
from hypothesis import strategies as st

from amcp.crypto.agreement import AgreementError, GatewayAgreement, Offer, cloud_answer
from amcp.crypto.keys import Ed25519Signer
from amcp.crypto.pki import (
    FleetCA,
    PkiError,
    common_name,
    make_csr,
    new_tls_key,
    write_secret_file,
)
from amcp.wire import enrol as wire
from cybernetic.__main__ import main
from tests.needs import needs_root


def test_init_writes_owner_only_files_and_refuses_twice(tmp_path: Path) -> None:
    ca = FleetCA(tmp_path / "ca")
    ca.init()
    for path in (ca.key_path, ca.cert_path, ca.crl_path, ca.issued_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.directory.stat().st_mode) == 0o700
    root = ca.certificate()
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(PkiError, match="already"):
        ca.init()


def test_client_certificate_names_the_authenticated_gateway_not_the_csr(tmp_path: Path) -> None:
    ca = FleetCA(tmp_path / "ca")
    ca.init()
    csr = make_csr(new_tls_key(), "someone-else")
    cert = x509.load_pem_x509_certificate(ca.issue_client(csr, subject="gw-1", valid_s=3600))
    assert common_name(cert) == "gw-1"
    cert.verify_directly_issued_by(ca.certificate())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert [c.subject for c in ca.issued()] == ["gw-1"]


def test_malformed_csr_is_a_typed_error(tmp_path: Path) -> None:
    ca = FleetCA(tmp_path / "ca")
    ca.init()
    with pytest.raises(PkiError, match="malformed"):
        ca.issue_client(b"not a csr", subject="gw-1", valid_s=60)


def test_server_certificate_has_names_and_ips(tmp_path: Path) -> None:
    ca = FleetCA(tmp_path / "ca")
    ca.init()
    _, pem = ca.issue_server(["127.0.0.1", "cloud.example"], valid_s=3600)
    san = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["cloud.example"]
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_revocation_lists_every_certificate_of_the_gateway(tmp_path: Path) -> None:
    ca = FleetCA(tmp_path / "ca")
    ca.init()
    for _ in range(2):
        ca.issue_client(make_csr(new_tls_key(), "gw-1"), subject="gw-1", valid_s=60)
    ca.issue_client(make_csr(new_tls_key(), "gw-2"), subject="gw-2", valid_s=60)
    serials = ca.revoke("gw-1")
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.certificate().public_key())  # type: ignore[arg-type]
    assert sorted(r.serial_number for r in crl) == sorted(serials)
    assert len(serials) == 2
    assert ca.revoke("gw-1") == []  # idempotent


def _pair() -> tuple[Ed25519Signer, Ed25519Signer]:
    return Ed25519Signer.generate("gw-1"), Ed25519Signer.generate("cloud")


def test_both_ends_agree_on_the_link_secret() -> None:
    gw, cloud = _pair()
    mine = GatewayAgreement(gw, cloud="cloud", epoch=3)
    answer = cloud_answer(
        cloud, gateway="gw-1", epoch=3, offer=mine.offer, gateway_key=gw.entry().material
    )
    secret = mine.finish(answer.ephemeral, answer.signature, cloud.entry().material)
    assert secret == answer.secret
    assert len(secret) == 32
    assert answer.secret.hex() not in repr(answer)
    with pytest.raises(AgreementError, match="already finished"):
        mine.finish(answer.ephemeral, answer.signature, cloud.entry().material)


@pytest.mark.parametrize("what", ["epoch", "gateway", "key", "ephemeral"])
def test_an_offer_moved_to_another_link_or_epoch_or_key_is_refused(what: str) -> None:
    gw, cloud = _pair()
    offer = GatewayAgreement(gw, cloud="cloud", epoch=1).offer
    kw = {"gateway": "gw-1", "epoch": 1, "offer": offer, "gateway_key": gw.entry().material}
    if what == "epoch":
        kw["epoch"] = 2
    elif what == "gateway":
        kw["gateway"] = "gw-2"
    elif what == "key":
        kw["gateway_key"] = Ed25519Signer.generate("gw-1").entry().material
    else:
        kw["offer"] = Offer(bytes(32), offer.signature)
    with pytest.raises(AgreementError):
        cloud_answer(cloud, **kw)  # type: ignore[arg-type]


def test_an_answer_signed_by_another_cloud_is_refused() -> None:
    gw, cloud = _pair()
    mine = GatewayAgreement(gw, cloud="cloud", epoch=1)
    answer = cloud_answer(
        cloud, gateway="gw-1", epoch=1, offer=mine.offer, gateway_key=gw.entry().material
    )
    impostor = Ed25519Signer.generate("cloud").entry().material
    with pytest.raises(AgreementError, match="cloud"):
        mine.finish(answer.ephemeral, answer.signature, impostor)


def test_token_text_round_trips_and_never_shows_its_secret() -> None:
    token = wire.BootstrapToken.generate()
    assert wire.BootstrapToken.parse(token.text()) == token
    assert token.secret.hex() not in repr(token)
    assert token.secret.hex() not in str(token)
    with pytest.raises(wire.TokenFormatError):
        wire.BootstrapToken.parse("cet1.zz.yy")


def test_frame_mac_and_signature_cover_every_field() -> None:
    gw = Ed25519Signer.generate("gw-1")
    token = wire.BootstrapToken.generate()
    req = wire.EnrolRequest(
        gateway="gw-1",
        token_id=token.token_id,
        request_id="r",
        ts_ms=1,
        node_key=gw.entry().material,
        csr=b"csr",
        epoch=1,
        ephemeral=b"e" * 32,
        agreement_sig=b"s",
    )
    req = wire.with_mac(wire.with_signature(req, gw), token.mac_key())
    decoded = wire.decode(wire.encode(req))
    assert isinstance(decoded, wire.EnrolRequest)
    wire.check_mac(decoded, token.mac_key())
    wire.check_signature(decoded, gw.entry().material)
    tampered = wire.EnrolRequest(
        **{**{f: getattr(req, f) for f in req.__struct_fields__}, "csr": b"x"}
    )
    with pytest.raises(wire.FrameAuthError):
        wire.check_mac(tampered, token.mac_key())
    with pytest.raises(wire.FrameAuthError):
        wire.check_signature(tampered, gw.entry().material)


@given(st.binary(max_size=2048))
@example(b"\x82\xa4type\xadenrol.request\xa8token_id\xa1\xff")  # bad UTF-8 in a str field
def test_decoder_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(wire.MalformedFrameError):
        wire.decode(data)


def test_oversized_frame_is_refused_before_decoding() -> None:
    with pytest.raises(wire.MalformedFrameError, match="over"):
        wire.decode(b"\x00" * (wire.MAX_FRAME_BYTES + 1))


def test_pki_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "pki")
    assert main(["pki", "--dir", d, "init"]) == 0
    assert main(["pki", "--dir", d, "init"]) == 2
    assert main(["pki", "--dir", d, "token", "--expires", "10m", "--gateway", "gw-1"]) == 0
    out = capsys.readouterr().out
    token = re.search(r"(cet1\.\S+)", out)
    assert token is not None
    assert main(["pki", "--dir", d, "list"]) == 0
    listing = capsys.readouterr().out
    assert "gw-1" in listing
    assert token.group(1) not in listing
    assert (
        wire.BootstrapToken.parse(token.group(1)).secret.hex()
        not in (tmp_path / "pki" / "enrolment.sqlite3").read_bytes().hex()
    )
    assert main(["pki", "--dir", d, "server-cert", "--host", "127.0.0.1", "--out", d + "/srv"]) == 0
    assert main(["pki", "--dir", d, "revoke", "gw-1"]) == 2  # never enrolled: nothing revoked
    assert main(["pki", "--dir", d, "crl"]) == 0
    assert main(["pki", "--dir", str(tmp_path / "none"), "token"]) == 2
    with pytest.raises(SystemExit):
        main(["pki", "--dir", d, "token", "--expires", "soon"])


def test_files_written_for_a_service_user_and_their_folders_are_its_own(tmp_path: Path) -> None:
    """`gateway enrol --owner` made tls/ as root before: the service could not renew into it.
    Folders made for a file are the owner's; root rewriting a service's file keeps its owner
    (`pki server-cert --owner mosquitto` no longer hands the CA's register to mosquitto)."""
    needs_root("changing file owners")
    target = tmp_path / "enrol" / "tls" / "client.pem"
    write_secret_file(target, b"secret", owner="nobody")
    for p in (target, target.parent, target.parent.parent):
        assert (p.stat().st_uid, p.stat().st_gid) == (65534, 65534), p
    assert tmp_path.stat().st_uid == 0  # what existed before is left alone
    assert target.stat().st_mode & 0o777 == 0o600
    write_secret_file(target, b"renewed")  # root, no owner given: the file stays nobody's
    assert target.stat().st_uid == 65534
    assert target.read_bytes() == b"renewed"
