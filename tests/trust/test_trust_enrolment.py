"""Enrolment over a real broker: one-time expiring tokens, proof of possession, renewal,
revocation, and the link secret both ends agree on."""

from __future__ import annotations

import asyncio
import getpass
import os
import pwd
import stat
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
from trust_support import Cloud, serving

from amcp.crypto import derive_link_keys
from amcp.crypto.agreement import GatewayAgreement
from amcp.crypto.keys import Ed25519Signer
from amcp.crypto.keystore import KeyStore
from amcp.crypto.pki import common_name, make_csr, new_tls_key
from amcp.link import CloudLinks, GatewayLink, read_secret, secrets_in_dir
from amcp.runtime.settings import BrokerLink
from amcp.wire import enrol as wire
from amcp.wire.telemetry import BatchAck
from cybernetic.__main__ import main
from cybernetic.mosquitto import MosquittoBroker
from gateway.enrol import (
    EnrolmentError,
    EnrolmentRefusedError,
    EnrolPaths,
    RenewalPolicy,
    enrol,
    renew,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_enrol_gives_certificate_trust_and_the_same_link_secret_to_both_ends(
    tmp_path: Path,
    cloud_factory: Callable[..., Cloud],
    gateway_link: BrokerLink,
    topic: str,
) -> None:
    cloud = cloud_factory()
    gw = f"gw-{topic}"
    token = cloud.enrolment.issue_token(expires_s=60)
    async with serving(cloud):
        state = await enrol(gateway_link, token.text(), gw, tmp_path / "gw", within_s=20)
    paths = EnrolPaths(tmp_path / "gw")
    assert state.epoch == 1
    assert state.cloud == "cloud"
    # the certificate names the gateway and chains to the fleet root
    pem = paths.client_pem.read_bytes()
    cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE") :])
    assert common_name(cert) == gw
    root = x509.load_pem_x509_certificate(paths.trust_bundle.read_bytes())
    cert.verify_directly_issued_by(root)
    # both ends hold the same link secret; the link's envelopes open on the other side
    assert read_secret(paths.link_secret) == read_secret(cloud.links_dir / gw)
    glink = GatewayLink(gw, read_secret(paths.link_secret), None)
    clinks = CloudLinks(secrets_in_dir(cloud.links_dir), None)
    t = f"cybernetic/gw/{gw}/ack"
    data = glink.seal(BatchAck(batch_id="b", stored=1), t)  # type: ignore[arg-type]
    assert clinks.open(gw, data, t).message == BatchAck(batch_id="b", stored=1)
    # secrets on disk are owner-only
    for f in (paths.client_pem, paths.link_secret, cloud.links_dir / gw, cloud.ca.key_path):
        assert _mode(f) == 0o600, f
    # the cloud recorded the gateway with its node key
    rec = cloud.enrolment.store.gateway(gw)
    assert rec is not None
    assert rec.active
    assert rec.node_key == KeyStore(paths.keys).signer().entry().material
    assert rec.cert_serial == f"{cert.serial_number:x}"


async def test_a_token_cannot_be_used_twice(
    tmp_path: Path,
    cloud_factory: Callable[..., Cloud],
    gateway_link: BrokerLink,
    topic: str,
) -> None:
    cloud = cloud_factory()
    token = cloud.enrolment.issue_token(expires_s=60).text()
    async with serving(cloud):
        await enrol(gateway_link, token, f"a-{topic}", tmp_path / "a", within_s=20)
        with pytest.raises(EnrolmentRefusedError) as err:
            await enrol(gateway_link, token, f"b-{topic}", tmp_path / "b", within_s=20)
    assert err.value.authenticated
    assert "already used" in err.value.reason
    assert cloud.enrolment.store.gateway(f"b-{topic}") is None
    assert not (tmp_path / "b" / "link.secret").exists()


async def test_an_expired_token_is_refused(
    tmp_path: Path,
    cloud_factory: Callable[..., Cloud],
    gateway_link: BrokerLink,
    topic: str,
) -> None:
    cloud = cloud_factory()
    token = cloud.enrolment.issue_token(expires_s=0.05).text()
    await asyncio.sleep(0.1)
    async with serving(cloud):
        with pytest.raises(EnrolmentRefusedError, match="expired"):
            await enrol(gateway_link, token, f"gw-{topic}", tmp_path / "gw", within_s=20)
    assert cloud.enrolment.store.gateway(f"gw-{topic}") is None


async def test_a_forged_token_secret_is_refused_and_does_not_burn_the_token(
    tmp_path: Path,
    cloud_factory: Callable[..., Cloud],
    gateway_link: BrokerLink,
    topic: str,
) -> None:
    cloud = cloud_factory()
    real = cloud.enrolment.issue_token(expires_s=60)
    forged = wire.BootstrapToken(real.token_id, bytes(32)).text()
    async with serving(cloud):
        with pytest.raises(EnrolmentRefusedError) as err:
            await enrol(gateway_link, forged, f"x-{topic}", tmp_path / "x", within_s=20)
        assert not err.value.authenticated
        await enrol(gateway_link, real.text(), f"gw-{topic}", tmp_path / "gw", within_s=20)


async def test_a_token_bound_to_a_gateway_cannot_enrol_another(
    tmp_path: Path,
    cloud_factory: Callable[..., Cloud],
    gateway_link: BrokerLink,
    topic: str,
) -> None:
    cloud = cloud_factory()
    token = cloud.enrolment.issue_token(expires_s=60, gateway=f"gw-{topic}").text()
    async with serving(cloud):
        with pytest.raises(EnrolmentRefusedError, match="another gateway"):
            await enrol(gateway_link, token, f"other-{topic}", tmp_path / "o", within_s=20)


async def test_renewal_moves_the_epoch_and_issues_a_new_certificate(
    tmp_path: Path,
    cloud_factory: Callable[..., Cloud],
    gateway_link: BrokerLink,
    topic: str,
) -> None:
    cloud = cloud_factory()
    gw = f"gw-{topic}"
    token = cloud.enrolment.issue_token(expires_s=60).text()
    async with serving(cloud):
        first = await enrol(gateway_link, token, gw, tmp_path / "gw", within_s=20)
        old_secret = read_secret(tmp_path / "gw" / "link.secret")
        second = await renew(gateway_link, tmp_path / "gw", within_s=20)
    assert second.epoch == first.epoch + 1
    new_secret = read_secret(tmp_path / "gw" / "link.secret")
    assert new_secret != old_secret
    assert new_secret == read_secret(cloud.links_dir / gw)
    serials = [c.serial for c in cloud.ca.issued() if c.subject == gw]
    assert len(serials) == 2
    rec = cloud.enrolment.store.gateway(gw)
    assert rec is not None
    assert rec.epoch == 2
    # keys of the new epoch are unrelated to the old ones
    assert derive_link_keys(new_secret, gateway=gw, cloud="cloud").up.key_id != (
        derive_link_keys(old_secret, gateway=gw, cloud="cloud").up.key_id
    )


async def test_a_revoked_gateway_cannot_renew_and_loses_its_link_secret(
    tmp_path: Path,
    cloud_factory: Callable[..., Cloud],
    gateway_link: BrokerLink,
    topic: str,
) -> None:
    cloud = cloud_factory()
    gw = f"gw-{topic}"
    token = cloud.enrolment.issue_token(expires_s=60).text()
    async with serving(cloud):
        await enrol(gateway_link, token, gw, tmp_path / "gw", within_s=20)
        serials = cloud.enrolment.revoke(gw)
        with pytest.raises(EnrolmentRefusedError, match="revoked"):
            await renew(gateway_link, tmp_path / "gw", within_s=20)
    assert len(serials) == 1
    assert cloud.enrolment.link_secret(gw) is None
    crl = x509.load_pem_x509_crl(cloud.ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serials[0]) is not None


async def test_a_renewal_signed_by_another_node_key_is_refused(
    tmp_path: Path,
    cloud_factory: Callable[..., Cloud],
    gateway_link: BrokerLink,
    topic: str,
) -> None:
    cloud = cloud_factory()
    gw = f"gw-{topic}"
    token = cloud.enrolment.issue_token(expires_s=60).text()
    async with serving(cloud):
        await enrol(gateway_link, token, gw, tmp_path / "gw", within_s=20)
        KeyStore(tmp_path / "gw" / "keys").generate(gw, force=True)  # an impostor's key
        with pytest.raises(EnrolmentRefusedError, match="signature"):
            await renew(gateway_link, tmp_path / "gw", within_s=20)


def test_renewal_policy() -> None:
    state = msgspec.convert(
        {
            "gateway": "g",
            "cloud": "c",
            "cloud_key": b"k",
            "epoch": 1,
            "link_ms": 0,
            "cert_not_after_ms": 10 * 86400_000,
            "cert_ms": 0,
        },
        type=__import__("gateway.enrol", fromlist=["EnrolmentState"]).EnrolmentState,
    )
    policy = RenewalPolicy(cert_before_s=86400, link_every_s=3600)
    assert policy.due(state, 1000) == (False, False)
    assert policy.due(state, 3600_000) == (False, True)
    assert policy.due(state, 9 * 86400_000) == (True, True)


async def test_no_answer_is_a_typed_error(tmp_path: Path, gateway_link: BrokerLink) -> None:
    token = wire.BootstrapToken.generate().text()
    with pytest.raises(EnrolmentError, match="no answer"):
        await enrol(gateway_link, token, "lonely", tmp_path / "gw", within_s=1)


@pytest.mark.parametrize("name", ["cloud", "enrol", "gateway"])
async def test_a_gateway_cannot_enrol_under_a_service_account_name(
    cloud_factory: Callable[..., Cloud], gateway_link: BrokerLink, tmp_path: Path, name: str
) -> None:
    cloud = cloud_factory()
    token = cloud.enrolment.issue_token(expires_s=60).text()
    async with serving(cloud):
        with pytest.raises(EnrolmentRefusedError, match="reserved"):
            await enrol(gateway_link, token, name, tmp_path / "gw", within_s=20)
    with pytest.raises(ValueError, match="invalid"):
        cloud.enrolment.issue_token(expires_s=60, gateway=name)


def _request(token: wire.BootstrapToken, gw: str) -> wire.EnrolRequest:
    signer = Ed25519Signer.generate(gw)
    offer = GatewayAgreement(signer, cloud="cloud", epoch=1).offer
    req = wire.EnrolRequest(
        gateway=gw,
        token_id=token.token_id,
        request_id=wire.new_request_id(),
        ts_ms=int(time.time() * 1000),
        node_key=signer.entry().material,
        csr=make_csr(new_tls_key(), gw),
        epoch=1,
        ephemeral=offer.ephemeral,
        agreement_sig=offer.signature,
    )
    return wire.with_mac(wire.with_signature(req, signer), token.mac_key())


def test_the_same_request_again_gets_the_same_answer_and_another_is_refused(
    cloud_factory: Callable[..., Cloud],
) -> None:
    cloud = cloud_factory()
    token = cloud.enrolment.issue_token(expires_s=60)
    req = _request(token, "gw-r")
    first = cloud.enrolment.handle(wire.encode(req), "gw-r")
    again = cloud.enrolment.handle(wire.encode(req), "gw-r")
    assert first is not None
    assert first == again
    other = cloud.enrolment.handle(wire.encode(_request(token, "gw-r")), "gw-r")
    assert other is not None
    answer = wire.decode(other)
    assert isinstance(answer, wire.EnrolResponse)
    assert not answer.ok
    assert "already used" in answer.reason


def test_a_request_on_another_gateways_topic_is_ignored(
    cloud_factory: Callable[..., Cloud],
) -> None:
    cloud = cloud_factory()
    token = cloud.enrolment.issue_token(expires_s=60)
    assert cloud.enrolment.handle(wire.encode(_request(token, "gw-a")), "gw-b") is None
    assert cloud.enrolment.store.token(token.token_id)[0].used_ms is None  # type: ignore[index]


def test_garbage_requests_are_dropped_without_error(cloud_factory: Callable[..., Cloud]) -> None:
    cloud = cloud_factory()

    @settings(max_examples=100)
    @given(st.binary(max_size=512) | st.builds(lambda b: b"\x82" + b, st.binary(max_size=64)))
    def check(data: bytes) -> None:
        assert cloud.enrolment.handle(data, "gw-x") is None

    check()


async def test_gateway_enrol_and_renew_from_the_command_line(
    cloud_factory: Callable[..., Cloud],
    broker: MosquittoBroker,
    tmp_path: Path,
    topic: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cloud = cloud_factory()
    gw = f"gw-{topic}"
    token = cloud.enrolment.issue_token(expires_s=60, gateway=gw).text()
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "pw").write_text(broker.password("gateway"))
    argv = [
        "gateway", "enrol", "--id", gw, "--dir", str(tmp_path / "gw"),
        "--broker", f"{broker.host}:{broker.port}", "--username", "gateway",
        "--password-file", str(tmp_path / "pw"), "--token-file", str(tmp_path / "token"),
    ]  # fmt: skip
    async with serving(cloud):
        assert await asyncio.to_thread(main, argv) == 0
        out = capsys.readouterr().out
        assert f"enrolled {gw}" in out
        assert token not in out
        assert await asyncio.to_thread(main, argv) == 2  # the token is spent
        assert "already used" in capsys.readouterr().err  # errors are one line on stderr
    assert read_secret(tmp_path / "gw" / "link.secret") == read_secret(cloud.links_dir / gw)


async def test_enrolment_files_belong_to_the_service_user(
    cloud_factory: Callable[..., Cloud], gateway_link: BrokerLink, tmp_path: Path, topic: str
) -> None:
    owner = "nobody" if os.geteuid() == 0 else getpass.getuser()
    uid = pwd.getpwnam(owner).pw_uid
    cloud = cloud_factory()
    token = cloud.enrolment.issue_token(expires_s=60).text()
    async with serving(cloud):
        await enrol(gateway_link, token, f"gw-{topic}", tmp_path / "gw", owner=owner, within_s=20)
    paths = EnrolPaths(tmp_path / "gw")
    files = [paths.client_pem, paths.link_secret, paths.state, paths.trust_bundle]
    files += [p for p in paths.keys.rglob("*") if p.is_file()]
    for f in files:
        assert f.stat().st_uid == uid, f
    for f in [paths.client_pem, paths.link_secret, *(paths.keys / "private").iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(paths.keys.stat().st_mode) == 0o700
