"""No secret material in any log: the trust flows run with logging captured at DEBUG, then
every log (this process, both daemons, both brokers), the metrics and the operator-facing
outputs that are not meant to show a secret are searched for every secret that was made."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from pathlib import Path

import httpx
import pytest

from amcp.link import read_secret
from cybernetic.__main__ import main
from cybernetic.devices import publish_readings
from cybernetic.stack import Stack
from gateway.enrol import EnrolPaths


def _forms(secret: bytes) -> set[str]:
    """The ways a secret could be printed: hex, base64, text."""
    out = {secret.hex(), base64.b64encode(secret).decode(), secret.hex().upper()}
    with contextlib.suppress(UnicodeDecodeError):
        out.add(secret.decode())
    return {s for s in out if len(s) >= 12}


def _pem_bodies(pem: bytes) -> set[str]:
    """Each base64 line of every PRIVATE KEY block in ``pem`` (a leak of any line counts)."""
    found: set[str] = set()
    for block in re.findall(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----(.+?)-----END", pem, re.DOTALL):
        found |= {line.decode() for line in block.split() if len(line) >= 16}
    return found


async def test_no_secret_appears_in_logs_metrics_or_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: set[str] = set()
    public_outputs: list[str] = []  # outputs that must not show secrets (not the shown-once ones)

    stack = Stack(tmp_path / "stack", tls=True)
    try:
        # device accounts through the command line; each password is printed exactly once
        pw = {}
        for name in ("dev-1", "dev-2"):
            assert (
                main(["devices", "--passwd", str(stack.edge.device_password_file), "add", name])
                == 0
            )
            out = capsys.readouterr().out
            shown = re.search(r"password \(shown once[^)]*\): (\S+)", out)
            assert shown is not None
            pw[name] = shown.group(1)
        stack.edge.reload()
        # a token through the command line, then one refused enrolment with it used twice
        assert main(["pki", "--dir", str(stack.pki_dir), "token", "--expires", "5m"]) == 0
        token = re.search(r"(cet1\.\S+)", capsys.readouterr().out)
        assert token is not None
        secrets.add(token.group(1))
        secrets |= _forms(bytes.fromhex(token.group(1).rsplit(".", 1)[1]))

        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        for name, password in pw.items():
            await publish_readings(
                stack.edge.host, stack.edge.device_port, name, password, range(1, 201)
            )
        assert await asyncio.to_thread(stack.wait_cloud_count, 400, 60) == 400
        # wrong credentials: the error must not echo the password
        with pytest.raises(Exception) as err:
            await publish_readings(
                stack.edge.host, stack.edge.device_port, "dev-1", pw["dev-2"], range(1, 2)
            )
        public_outputs.append(str(err.value))
        paths = EnrolPaths(stack.enrol_dir)
        secrets |= _forms(read_secret(paths.link_secret))
        secrets |= _pem_bodies(paths.client_pem.read_bytes())
        await asyncio.to_thread(stack.renew_gateway, link_secret=True)
        secrets |= _forms(read_secret(paths.link_secret))
        secrets |= _pem_bodies(paths.client_pem.read_bytes())
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{stack.gateway_metrics}/metrics")).text
            metrics += (await http.get(f"http://127.0.0.1:{stack.cloud_metrics}/metrics")).text
        await asyncio.to_thread(stack.revoke_gateway)
        # config check of both generated configs
        for config in (stack.gateway_config, stack.cloud_config):
            main(["config", "check", str(config)])
            public_outputs.append(capsys.readouterr().out)
        assert main(["pki", "--dir", str(stack.pki_dir), "list"]) == 0
        public_outputs.append(capsys.readouterr().out)
    finally:
        stack.close()

    for name, password in pw.items():
        secrets |= _forms(password.encode())
        assert name  # the names themselves are public
    for path in stack.state.rglob("*"):
        if path.is_file() and path.suffix in {".key", ".pem"}:
            secrets |= _pem_bodies(path.read_bytes())
    for path in (stack.state / "secrets").rglob("*"):
        if path.is_dir():
            continue
        secrets |= _forms(path.read_text().strip().encode())
    secrets |= _pem_bodies((stack.pki_dir / "ca" / "ca.key").read_bytes())
    assert len(secrets) > 20  # the scan looks for something

    logs = {"caplog": caplog.text, "metrics": metrics}
    for kind in ("gateway", "cloud"):
        logs[f"{kind}.log"] = stack.log(kind)
    for broker in (stack.edge, stack.cloud_broker):
        logs[str(broker.log_file)] = broker.log_file.read_text(errors="replace")
    for i, out in enumerate(public_outputs):
        logs[f"output {i}"] = out
    assert logs["gateway.log"]  # the daemons did log
    leaks = [(where, s[:8]) for where, text in logs.items() for s in secrets if s in text]
    assert leaks == []
