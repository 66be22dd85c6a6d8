"""The cloud link over mutual TLS with an enrolled gateway, through real brokers and daemons:
enrolment end to end, revocation at the broker and the envelope layer, renewal with nothing
lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from amcp.crypto.pki import FleetCA, PkiError
from amcp.link import CloudLinks, GatewayLink, read_secret, secrets_in_dir
from amcp.runtime.mqtt import make_client
from amcp.runtime.settings import BrokerLink
from amcp.wire import UnknownKeyError
from amcp.wire.telemetry import BatchAck
from cybernetic.devices import publish_readings
from cybernetic.stack import Stack
from gateway.enrol import EnrolmentError, EnrolPaths


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    s = Stack(tmp_path / "stack", tls=True)
    yield s  # type: ignore[misc]
    s.close()


def _tls_link(stack: Stack, **kw: str) -> BrokerLink:
    paths = EnrolPaths(stack.enrol_dir)
    base = BrokerLink(host=stack.cloud_broker.host, port=stack.cloud_broker.tls_port)
    return (
        paths.tls_link(base)
        if not kw
        else BrokerLink(host=stack.cloud_broker.host, port=stack.cloud_broker.tls_port, **kw)
    )


async def _can_connect(link: BrokerLink, client_id: str = "probe") -> bool:
    try:
        async with make_client(link, client_id, clean_session=True, timeout=3):
            return True
    except aiomqtt.MqttError:
        return False


async def _publish(stack: Stack, device: str, password: str, seqs: range, rate: float) -> None:
    await publish_readings(
        stack.edge.host, stack.edge.device_port, device, password, seqs, rate=rate
    )


async def test_enrolled_gateway_delivers_over_mutual_tls(stack: Stack, tmp_path: Path) -> None:
    pw = stack.add_device("dev-1")
    stack.start()
    await asyncio.to_thread(stack.wait_gateway_ready)
    # the gateway's uplink carries no password: the certificate is its identity
    config = stack.gateway_config.read_text()
    assert "password" not in config.split("[uplink.broker]")[1].split("\n[")[0]
    await _publish(stack, "dev-1", pw, range(1, 501), rate=2000)
    assert await asyncio.to_thread(stack.wait_cloud_count, 500, 60) == 500
    assert stack.cloud_count() == 500
    # the TLS listener refuses a client without a certificate, and one from another CA
    ca_file = str(EnrolPaths(stack.enrol_dir).trust_bundle)
    assert not await _can_connect(_tls_link(stack, ca_file=ca_file))
    other = FleetCA(tmp_path / "other-ca")
    other.init()
    key, cert = other.issue_server(["gw-1"], valid_s=3600)
    (tmp_path / "other.pem").write_bytes(key + cert)
    assert not await _can_connect(
        _tls_link(stack, ca_file=ca_file, cert_file=str(tmp_path / "other.pem"))
    )
    # and the gateway's own certificate is accepted
    assert await _can_connect(_tls_link(stack))


async def test_a_revoked_gateway_cannot_connect_or_publish(stack: Stack) -> None:
    pw = stack.add_device("dev-1")
    stack.start()
    await asyncio.to_thread(stack.wait_gateway_ready)
    await _publish(stack, "dev-1", pw, range(1, 101), rate=2000)
    assert await asyncio.to_thread(stack.wait_cloud_count, 100, 60) == 100
    old_secret = read_secret(EnrolPaths(stack.enrol_dir).link_secret)
    serials = await asyncio.to_thread(stack.revoke_gateway)
    assert serials
    # broker: a new connection with the revoked certificate fails the handshake
    assert not await _can_connect(_tls_link(stack))
    # readings published now stay at the edge: the gateway cannot get back to the cloud
    await _publish(stack, "dev-1", pw, range(101, 201), rate=2000)
    await asyncio.sleep(3)
    assert stack.cloud_count() == 100
    # envelope layer: the cloud no longer holds a key for the gateway's link
    links = CloudLinks(secrets_in_dir(stack.pki_dir / "links"), None)
    topic = "cybernetic/gw/gw-1/telemetry"
    data = GatewayLink("gw-1", old_secret, None).seal(BatchAck(batch_id="x", stored=0), topic)  # type: ignore[arg-type]
    with pytest.raises(UnknownKeyError):
        links.open("gw-1", data, topic)
    # and it cannot even reach the cloud to ask for a renewal
    with pytest.raises(EnrolmentError):
        await asyncio.to_thread(stack.renew_gateway)


async def test_certificate_renewal_keeps_data_flowing_with_nothing_lost(stack: Stack) -> None:
    pw = stack.add_device("dev-1")
    stack.start()
    await asyncio.to_thread(stack.wait_gateway_ready)
    ca = FleetCA(stack.pki_dir / "ca")
    old = {c.serial for c in ca.issued() if c.subject == "gw-1"}
    publishing = asyncio.create_task(_publish(stack, "dev-1", pw, range(1, 3001), rate=500))
    await asyncio.sleep(1.5)
    await asyncio.to_thread(stack.renew_gateway)
    # prove the new certificate is the one in use: retire the old one and force a reconnect
    for serial in old:
        ca.revoke_serial(serial)
    stack.cloud_broker.reload()
    await asyncio.to_thread(stack.kick_gateway)
    await publishing
    assert await asyncio.to_thread(stack.wait_cloud_count, 3000, 90) == 3000
    assert set(stack.cloud_keys()) == {("dev-1", "b1", s) for s in range(1, 3001)}
    assert await _can_connect(_tls_link(stack))
    with pytest.raises(PkiError):
        ca.revoke_serial(12345)
