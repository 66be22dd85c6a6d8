"""`cybernetic intent send` and `cybernetic units` against an S1 running on a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import tomli_w

from amcp.runtime.supervisor import ChildContext
from cybernetic.__main__ import main
from cybernetic.mosquitto import MosquittoBroker
from gateway.s1 import S1, QuotaSettings, S1Settings, UnitConfig
from tests.gateway.s1.s1_support import caps, device, login, make_links, measure, running


def _cloud_config(tmp: Path, broker: MosquittoBroker, gateway: str, secret: bytes) -> Path:
    links = tmp / "links"
    links.mkdir()
    (links / gateway).write_text(secret.hex())
    path = tmp / "cloud.toml"
    path.write_text(
        tomli_w.dumps(
            {
                "cloud": {"state_dir": str(tmp / "cloud")},
                "broker": {
                    "port": broker.port,
                    "username": "cloud",
                    "password": broker.password("cloud"),
                },
                "links": {"secrets_dir": str(links)},
            }
        )
    )
    return path


async def _cli(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cybernetic",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,  # logs (other tests' gateways are strangers here)
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize("silent", [False, True])
async def test_intent_send_prints_streamed_updates_and_exits_by_outcome(
    broker: MosquittoBroker, topic: str, tmp_path: Path, silent: bool
) -> None:
    gateway = f"gw-{topic}"
    secret = os.urandom(32)
    dev = device(broker, f"{topic}-dev", {"measure": measure}, silent=silent)
    settings = S1Settings(capabilities=caps(dev.device), command_timeout=0.5)  # default prefix
    s1 = S1(
        settings,
        tmp_path / "gw.sqlite3",
        make_links(gateway, secret).gateway,
        gateway=gateway,
        local_broker=login(broker, "gateway"),
        cloud_broker=login(broker, "gateway"),
        state_dir=tmp_path,
    )
    config = _cloud_config(tmp_path, broker, gateway, secret)
    async with running(dev.run(), s1.supervisor.run(ChildContext("s1"))):
        await dev.subscribed.wait()
        code, out = await _cli(
            "intent",
            "send",
            "sensor.measure",
            "--args",
            '{"n": 2}',
            "-c",
            str(config),
            "--gateway",
            gateway,
        )
        unknown, out2 = await _cli(
            "intent", "send", "no.such.thing", "-c", str(config), "--wait", "0.2"
        )
    lines = out.splitlines()
    assert lines[0].startswith("intent ")
    assert lines[0].endswith(f"-> gateway {gateway}")
    if silent:
        assert code == 3, out
        assert lines[-1].startswith(f"failed    timeout: device {dev.device!r} did not answer")
    else:
        assert code == 0, out
        assert 'result    {"sample": 0}' in lines
        assert 'result    {"sample": 1}' in lines
        assert lines[-1] == 'done      {"sum": 1}'
    assert unknown == 4, out2
    assert "unknown_capability" in out2


async def test_units_prints_the_tree_a_running_gateway_wrote(
    broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = S1Settings(
        units=[
            UnitConfig(path="line-a/pumps", quotas=QuotaSettings(max_rate=5)),
            UnitConfig(path="line-b"),
        ],
        tree_interval=0.05,
    )
    s1 = S1(
        settings,
        tmp_path / "gw.sqlite3",
        make_links("gw-u").gateway,
        gateway="gw-u",
        local_broker=login(broker, "gateway"),
        cloud_broker=login(broker, "gateway"),
        state_dir=tmp_path,
    )
    async with running(s1.supervisor.run(ChildContext("s1"))):
        async with asyncio.timeout(10):
            while not s1.tree_path.exists():  # noqa: ASYNC110 - a file another task writes
                await asyncio.sleep(0.05)
        s1.units.spawn("line-b", "mixer")
        await s1.write_tree()
    assert main(["units", "--file", str(s1.tree_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gateway gw-u  (written ")
    assert "spawn breaker closed" in out[0]
    assert out[1].startswith("/  [running]  children 2/16")
    assert any(line.startswith("├── line-a  [running]") for line in out)
    assert any("└── pumps  [running]" in line and "rate 5/s" in line for line in out)
    assert any("└── mixer  [running]" in line for line in out)
    assert main(["units", "--file", str(s1.tree_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["root"]["children"][1]["children"][0]["path"] == "line-b/mixer"
    assert main(["units", "--file", str(tmp_path / "missing.json")]) == 1
