"""OPC-UA against a real asyncua server: subscriptions, polling, writes and method calls as
commands, a restarted server, Basic256Sha256 Sign&Encrypt with fleet certificates and a
refused one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

from amcp.crypto.pki import FleetCA
from cybernetic.mosquitto import MosquittoBroker
from firmware_bridge.certs import issue_opcua
from firmware_bridge.opcua import browse
from firmware_bridge.simulated import OpcuaMachine
from tests.firmware_bridge.conftest import listening, running_bridge, until


@contextlib.asynccontextmanager
async def machine(port: int, secure_dir: Path | None = None) -> AsyncIterator[OpcuaMachine]:
    m = OpcuaMachine(port)
    if secure_dir is not None:
        m.server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    await m.setup()
    if secure_dir is not None:
        await m.server.load_certificate(secure_dir / "server.pem")
        await m.server.load_private_key(secure_dir / "server-key.pem")
        store = TrustStore([secure_dir / "trusted"], [])
        await store.load()
        m.server.set_certificate_validator(
            CertificateValidator(
                CertificateValidatorOptions.TRUSTED_VALIDATION
                | CertificateValidatorOptions.PEER_CLIENT,
                store,
            )
        )
    await m.start()
    try:
        yield m
    finally:
        await m.stop()


def opcua_device(m: OpcuaMachine, **extra: object) -> dict[str, object]:
    return {
        "protocol": "opcua",
        "id": "press-1",
        "endpoint": m.endpoint,
        "publish_ms": 50,
        "timeout": 2,
        "points": [
            {"name": "temperature", "node": m.node("Temperature"), "sampling_ms": 20},
            {"name": "speed", "node": m.node("Speed"), "writable": True, "sampling_ms": 20},
            {"name": "name", "node": m.node("Name"), "mode": "poll"},
        ],
        "methods": [
            {
                "name": "reset",
                "object": f"ns={m.ns};s=Machine",
                "method": f"ns={m.ns};s=Machine.Reset",
            }
        ],
        **extra,
    }


async def test_subscription_write_call_and_restart(broker: MosquittoBroker, port: int) -> None:
    async with (
        machine(port) as m,
        listening(broker) as listener,
        running_bridge(broker, [opcua_device(m, poll_interval=0.1)]) as bridge,
    ):
        await listener.wait_for(lambda d, r: "temperature" in r["values"])
        await listener.wait_for(lambda d, r: r["values"].get("name") == "press-1")
        await m.write("Temperature", ua.Variant(31.5, ua.VariantType.Double))
        await listener.wait_for(lambda d, r: r["values"].get("temperature") == 31.5)
        runner = bridge.runners["press-1"]
        assert await runner.command("write", {"point": "speed", "value": 1200}) == {
            "point": "speed",
            "value": 1200,
        }
        assert await m.read("Speed") == 1200
        await listener.wait_for(lambda d, r: r["values"].get("speed") == 1200)
        assert await runner.command("call", {"method": "reset"}) is True
        assert await m.read("Speed") == 0
        with pytest.raises(Exception, match="not writable"):
            await runner.command("write", {"point": "temperature", "value": 1})
    # restart: the server goes away and comes back on the same port
    async with (
        machine(port) as m,
        listening(broker) as listener,
        running_bridge(broker, [opcua_device(m)]) as bridge,
    ):
        await listener.wait_for(lambda d, r: "temperature" in r["values"])
        health = bridge.health["press-1"]
        await m.stop()
        await until(lambda: not health.connected, 15)
        m2 = OpcuaMachine(port)
        await m2.setup()
        await m2.start()
        try:
            await m2.write("Temperature", ua.Variant(55.0, ua.VariantType.Double))
            await listener.wait_for(lambda d, r: r["values"].get("temperature") == 55.0, 20)
            assert health.connects >= 2
        finally:
            await m2.stop()


async def test_browse(port: int) -> None:
    async with machine(port) as m, Client(m.endpoint) as client:
        found = {entry["path"]: entry for entry in await browse(client)}
        assert found["Machine/Temperature"]["node"] == m.node("Temperature")
        assert found["Machine/Reset"]["type"] == "method"


async def test_basic256sha256_and_a_refused_certificate(
    broker: MosquittoBroker, port: int, tmp_path: Path
) -> None:
    ca = FleetCA(tmp_path / "pki")
    ca.init()
    other = FleetCA(tmp_path / "other-pki")
    other.init(name="someone else")
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "root.der").write_bytes(
        ca.certificate().public_bytes(
            __import__("cryptography").hazmat.primitives.serialization.Encoding.DER
        )
    )
    key, cert = issue_opcua(
        ca, "urn:cybernetic:simulated-machine:server", ["127.0.0.1", "localhost"]
    )
    (tmp_path / "server-key.pem").write_bytes(key)
    (tmp_path / "server.pem").write_bytes(cert)
    for name, authority in (("good", ca), ("bad", other)):
        key, cert = issue_opcua(authority, f"urn:cybernetic:gateway:{name}:bridge", ["localhost"])
        (tmp_path / f"{name}.key").write_bytes(key)
        (tmp_path / f"{name}.pem").write_bytes(cert)

    def secure(m: OpcuaMachine, name: str) -> dict[str, object]:
        return opcua_device(
            m,
            id=f"press-{name}",
            security="sign_encrypt",
            certificate_file=str(tmp_path / f"{name}.pem"),
            key_file=str(tmp_path / f"{name}.key"),
        )

    async with machine(port, tmp_path) as m, listening(broker) as listener:
        devices = [secure(m, "good"), secure(m, "bad")]
        async with running_bridge(broker, devices) as bridge:
            await listener.wait_for(lambda d, r: d == "press-good" and "temperature" in r["values"])
            bad = bridge.health["press-bad"]
            await until(lambda: bool(bad.errors_by_kind.get("security")), 10)
            assert not bad.connected
            assert bridge.health["press-good"].connected
