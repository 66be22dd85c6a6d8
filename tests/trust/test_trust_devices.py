"""`cybernetic devices`: device accounts on a real broker, through the command line.

Device accounts go to the broker's device password file: they log in on the device listeners
(``broker.device_port``, the TLS listener), never on the service listener (``broker.port``).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from cybernetic.__main__ import main
from cybernetic.mosquitto import MosquittoBroker, TlsListener


def _cli(capsys: pytest.CaptureFixture[str], broker: MosquittoBroker, *argv: str) -> str:
    code = main(
        [
            "devices",
            "--passwd",
            str(broker.device_password_file),
            "--gateway-id",
            "gw-1",
            "--pid",
            str(broker.pid),
            *argv,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def _password(out: str) -> str:
    match = re.search(r"password \(shown once[^)]*\): (\S+)", out)
    assert match is not None, out
    return match.group(1)


async def _connects(
    broker: MosquittoBroker, user: str, password: str, *, port: int | None = None
) -> bool:
    await asyncio.sleep(0.2)  # the broker reloads the password file after SIGHUP
    try:
        async with aiomqtt.Client(
            broker.host, port or broker.device_port or 0, username=user, password=password
        ):
            return True
    except aiomqtt.MqttError:
        return False


async def test_add_rotate_remove_a_device(
    broker_factory: Callable[[], MosquittoBroker], capsys: pytest.CaptureFixture[str]
) -> None:
    broker = broker_factory()
    password = _password(_cli(capsys, broker, "add", "dev-a"))
    assert await _connects(broker, "dev-a", password)
    # a device account is not a service account: the service listener refuses it
    assert not await _connects(broker, "dev-a", password, port=broker.port)
    assert not await _connects(broker, "dev-a", password + "x")  # wrong credentials refused
    assert not await _connects(broker, "dev-b", password)  # another device's name refused
    # the password is in the device password file only, and only as a hash
    assert password not in broker.device_password_file.read_text()
    assert "dev-a" not in broker.password_file.read_text()
    rotated = _password(_cli(capsys, broker, "rotate", "dev-a"))
    assert rotated != password
    assert not await _connects(broker, "dev-a", password)
    assert await _connects(broker, "dev-a", rotated)
    _cli(capsys, broker, "remove", "dev-a")
    assert not await _connects(broker, "dev-a", rotated)
    assert "dev-a" not in _cli(capsys, broker, "list")


async def test_right_credentials_cannot_publish_as_another_device(
    broker_factory: Callable[[], MosquittoBroker], capsys: pytest.CaptureFixture[str]
) -> None:
    broker = broker_factory()
    pw_a = _password(_cli(capsys, broker, "add", "dev-a"))
    _cli(capsys, broker, "add", "dev-b")
    await asyncio.sleep(0.2)
    got: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(
        broker.host, broker.port, username="gateway", password=broker.password("gateway")
    ) as watcher:
        await watcher.subscribe("devices/+/telemetry", qos=1)
        async with aiomqtt.Client(
            broker.host, broker.device_port or 0, username="dev-a", password=pw_a
        ) as a:
            await a.publish("devices/dev-b/telemetry", b"forged", qos=1)
            await a.publish("devices/dev-a/telemetry", b"own", qos=1)
        async with asyncio.timeout(5):
            async for msg in watcher.messages:
                got.append((msg.topic.value, bytes(msg.payload)))  # type: ignore[arg-type]
                if msg.payload == b"own":
                    break
    assert got == [("devices/dev-a/telemetry", b"own")]


def test_service_accounts_and_bad_names_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    no_config = ["--gateway-config", str(tmp_path / "none.toml")]
    for name in ("gateway", "cloud", "enrol", "../x", ""):
        assert main(["devices", "--passwd", str(passwd), *no_config, "add", name]) == 2
    assert main(["devices", "--passwd", str(passwd), *no_config, "rotate", "nobody"]) == 2
    out = capsys.readouterr().out
    assert "password" not in out.replace("passwd", "")
    assert main(["devices", "--passwd", str(passwd), *no_config, "add", "dev-x"]) == 0
    assert main(["devices", "--passwd", str(passwd), *no_config, "add", "dev-x"]) == 2  # exists
    assert passwd.stat().st_mode & 0o077 == 0


def test_names_that_are_service_client_ids_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device's client id is its name on the device listeners: a device named like one of
    the gateway's clients could take over that client's session (issue 16, finding 3)."""
    passwd = tmp_path / "passwd"
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nid = "plant-7"\n')
    base = ["devices", "--passwd", str(passwd), "--gateway-config", str(config)]
    # the gateway's id and its client ids, from its configuration
    for name in ("plant-7", "plant-7-ingest", "plant-7-s1-devices", "plant-7-anything"):
        capsys.readouterr()
        assert main([*base, "add", name]) == 2, name
        out = capsys.readouterr().err  # errors go to stderr
        assert "client id of gateway 'plant-7'" in out, out
        assert "choose another name" in out
    # names shaped like any service client id, whatever the gateway's id
    for name in ("gw-1-ingest", "cloud-ingest", "cloud-s1", "x-rules", "gw-9-enrol-0a1b2c3d"):
        capsys.readouterr()
        assert main([*base, "add", name]) == 2, name
        assert "ends like a service client id" in capsys.readouterr().err
    # --gateway-id instead of the configuration
    no_config = ["devices", "--passwd", str(passwd), "--gateway-config", str(tmp_path / "x")]
    assert main([*no_config, "--gateway-id", "gw-3", "add", "gw-3-pump"]) == 2
    assert main([*no_config, "--gateway-id", "gw-3", "add", "pump-gw-3"]) == 0
    assert main([*base, "add", "plant-70"]) == 0  # not plant-7 followed by "-"
    assert main([*base, "add", "ingest-meter"]) == 0
    assert "plant-7-ingest" not in passwd.read_text()
    # an unreadable gateway configuration stops `add` with the reason, not silently
    config.write_text("[gateway]\n")
    capsys.readouterr()
    assert main([*base, "add", "dev-y"]) == 2
    assert "--gateway-id" in capsys.readouterr().err


# aiomqtt leaves paho's TLS socket for the garbage collector when the broker refuses a login
@pytest.mark.filterwarnings("ignore:Exception ignored in. <ssl.SSLSocket")
async def test_devices_reach_the_broker_over_tls_with_their_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tls_dir = tmp_path / "tls"
    argv = ["devices", "tls", "--dir", str(tls_dir), "--host", "127.0.0.1", "--host", "gw.lan"]
    assert main(argv) == 0
    assert "devices trust" in capsys.readouterr().out
    assert main(argv) == 0  # made once: a second run (an upgrade) keeps it
    assert "exists" in capsys.readouterr().out
    ca = tls_dir / "devices-ca.pem"
    assert oct(ca.stat().st_mode & 0o777) == "0o644"
    assert oct((tls_dir / "server.key").stat().st_mode & 0o777) == "0o600"
    broker = MosquittoBroker(
        tmp_path / "broker",
        tls=TlsListener(
            cafile=ca,
            certfile=tls_dir / "server.pem",
            keyfile=tls_dir / "server.key",
            require_certificate=False,
        ),
    )
    broker.start()
    try:
        broker.add_user("gateway", "gw-secret")
        password = _password(_cli(capsys, broker, "add", "dev-t"))
        assert "dev-t" in broker.device_password_file.read_text()
        await asyncio.sleep(0.2)
        trusted = ssl.create_default_context(cafile=str(ca))

        def device(
            password: str, context: ssl.SSLContext, identifier: str | None = None
        ) -> aiomqtt.Client:
            return aiomqtt.Client(
                "127.0.0.1",
                broker.tls_port or 0,
                username="dev-t",
                password=password,
                tls_context=context,
                identifier=identifier,
            )

        async with aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            username="gateway",
            password="gw-secret",
            identifier="gw-1-ingest",
        ) as watcher:
            await watcher.subscribe("devices/dev-t/telemetry", qos=1)
            # the TLS listener is a device listener: the device's client id is its name, so
            # claiming the gateway's does not disconnect the gateway
            async with device(password, trusted, identifier="gw-1-ingest") as dev:
                await dev.publish("devices/dev-t/telemetry", b'{"seq": 1}', qos=1)
            async with asyncio.timeout(5):
                async for msg in watcher.messages:
                    assert msg.payload == b'{"seq": 1}'
                    break
        with pytest.raises(aiomqtt.MqttError):  # wrong password: refused, over TLS too
            async with device(password + "x", trusted):
                pass
        with pytest.raises(aiomqtt.MqttError):  # a broker the device does not trust
            async with device(password, ssl.create_default_context()):
                pass
    finally:
        broker.stop()
