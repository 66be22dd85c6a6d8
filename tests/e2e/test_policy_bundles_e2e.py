"""Signed policy bundles end to end (issue 20): `cybernetic policy push` against the running
cloud daemon, the row synced to the real gateway daemon (enrolled, so it knows the cloud's
node key), which verifies and applies it; readings it denies stop reaching the cloud. A
bundle for another zone is ignored, a replayed older bundle and a forged one are refused
with their reasons, and the running policy stays."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from amcp import bundles
from amcp.store import reads as store_reads
from amcp.store import schema as store_schema
from amcp.wire.messages import PolicyBundle
from cloud.control import SOCKET_NAME, PoliciesRead, PoliciesWrite, send
from cloud.readings import recorded_readings
from cybernetic.stack import Stack, scrape
from tests.e2e.test_rules_e2e import _publish

CLOSED = 'policy "closed" version 1\ndefault deny because "closed"\n'
HUMID_50 = 'policy "humid" version 1\nrule wet when humidity > 50 then deny because "wet"\n'
HUMID_30 = 'policy "humid" version 2\nrule wet when humidity > 30 then deny because "damp"\n'


def policy(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cybernetic", "policy", *args, "-c", str(stack.cloud_config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def gateway_rows(stack: Stack) -> dict[str, bytes]:
    path = stack.state / "gateway" / "store.sqlite3"
    if not path.exists():
        return {}
    with contextlib.closing(store_schema.connect(path, readonly=True)) as conn:
        return store_reads.items(conn, bundles.NAMESPACE)


async def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


def metric(stack: Stack, name: str, **labels: str) -> float | None:
    key = name + "".join(f":{k}={v}" for k, v in labels.items())
    return scrape(stack.gateway_metrics).get(key)


async def test_pushed_bundles_reach_their_zone_and_bad_ones_are_refused(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "s", tls=True, gateway={"gateway": {"zone": "plant-a"}})
    try:
        password = stack.add_device("sensor-01")
        files = {}
        for name, text in (("closed", CLOSED), ("humid50", HUMID_50), ("humid30", HUMID_30)):
            files[name] = tmp_path / f"{name}.policy"
            files[name].write_text(text)
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        stack.start_gateway()
        await asyncio.to_thread(stack.wait_gateway_ready)

        # another zone's bundle reaches the gateway's store and is ignored
        other = await asyncio.to_thread(
            policy, stack, "push", str(files["closed"]), "--version", "1", "--zone", "plant-b"
        )
        assert other.returncode == 0, other.stderr
        assert "the running cloud wrote it" in other.stdout
        await wait_for(lambda: "closed@plant-b" in gateway_rows(stack), 20, "sync of plant-b")
        await _publish(stack, "sensor-01", password, [70.0], start=1)
        await asyncio.to_thread(stack.wait_cloud_count, 1, 30)  # not denied
        assert metric(stack, "cybernetic_policy_bundle_version") == 0

        # every zone's bundle applies: readings it denies stop reaching the cloud
        pushed = await asyncio.to_thread(
            policy, stack, "push", str(files["humid50"]), "--version", "2"
        )
        assert pushed.returncode == 0, pushed.stderr
        await wait_for(
            lambda: metric(stack, "cybernetic_policy_bundle_version") == 2, 20, "v2 applied"
        )
        await _publish(stack, "sensor-01", password, [60.0, 40.0], start=2)
        await asyncio.to_thread(stack.wait_cloud_count, 2, 30)
        newer = await asyncio.to_thread(
            policy, stack, "push", str(files["humid30"]), "--version", "3"
        )
        assert newer.returncode == 0, newer.stderr
        stale = await asyncio.to_thread(
            policy, stack, "push", str(files["closed"]), "--version", "3"
        )
        assert stale.returncode == 2  # refused by the command already: not above 3
        await wait_for(
            lambda: metric(stack, "cybernetic_policy_bundle_version") == 3, 20, "v3 applied"
        )

        # a replayed older bundle (v2's signed row, written back) and a forged one are refused
        socket = stack.state / "cloud" / SOCKET_NAME
        rows = send(socket, PoliciesRead()).rows or {}
        history = {k: base64.b64decode(v) for k, v in rows[bundles.HISTORY_NAMESPACE].items()}
        current = {k: base64.b64decode(v) for k, v in rows[bundles.NAMESPACE].items()}
        v2 = history[bundles.history_key("humid", 2)]

        def write(key: str, data: bytes, seen: dict[str, bytes]) -> None:
            answer = send(
                socket,
                PoliciesWrite(
                    rows=[(bundles.NAMESPACE, key, base64.b64encode(data).decode())],
                    expect=bundles.rows_digest(seen),
                ),
            )
            assert answer.ok, answer

        await asyncio.to_thread(write, "humid@*", v2, current)
        await wait_for(
            lambda: (
                metric(stack, "cybernetic_policy_bundle_refusals_total", reason="older_version")
                == 1
            ),
            20,
            "replay refused",
        )
        row, _ = bundles.decode(current["humid@*"])
        forged_body = msgspec.msgpack.encode(
            PolicyBundle(name="humid", version=9, expires_ms=2**62, source=CLOSED)
        )
        forged = msgspec.msgpack.encode(msgspec.structs.replace(row, body=forged_body))
        current["humid@*"] = v2
        await asyncio.to_thread(write, "humid@*", forged, current)
        await wait_for(
            lambda: (
                metric(stack, "cybernetic_policy_bundle_refusals_total", reason="bad_signature")
                == 1
            ),
            20,
            "forgery refused",
        )
        assert metric(stack, "cybernetic_policy_bundle_version") == 3  # it stayed

        await _publish(stack, "sensor-01", password, [35.0, 20.0], start=4)
        await asyncio.to_thread(stack.wait_cloud_count, 3, 30)
        await asyncio.sleep(0.5)
        assert stack.cloud_count() == 3  # 70 (before), 40, 20: 60 and 35 were denied
        kept = sorted(_values(stack))
        assert kept == [20.0, 40.0, 70.0]

        refused = [e for e in stack.cloud_events() if e.name == "policy.bundle.refused"]
        assert sorted(e.attrs["reason"] for e in refused) == ["bad_signature", "older_version"]
        applied = [
            e.attrs["version"] for e in stack.cloud_events() if e.name == "policy.bundle.applied"
        ]
        assert applied == [2, 3]

        listed = await asyncio.to_thread(policy, stack, "list")
        assert listed.returncode == 0, listed.stderr
        assert "closed@plant-b" in listed.stdout
        assert "bad_signature" in listed.stdout  # the forged row, as the cloud holds it

        back = await asyncio.to_thread(policy, stack, "rollback", "humid", "--to", "2")
        assert back.returncode == 0, back.stderr
        await wait_for(
            lambda: metric(stack, "cybernetic_policy_bundle_version") == 4, 20, "rollback as v4"
        )
    finally:
        await asyncio.to_thread(stack.close)


def _values(stack: Stack) -> list[float]:
    return [float(r.values["humidity"]) for r in recorded_readings(stack.cloud_db)]
