"""Issue 16: no single message, client or full disk may stop a gateway.

Each test drives the real daemons on real brokers with a client it writes itself (raw paho),
and asserts that the daemon stays up, that every good reading sent after the bad ones arrives,
and that the counters say what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
import pytest

from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape
from tests.needs import needs_root


def _raw_client(host: str, port: int, user: str, password: str) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"raw-{os.urandom(4).hex()}")
    client.username_pw_set(user, password)
    client.connect(host, port)
    client.loop_start()
    return client


def _publish_raw(stack: Stack, device: str, password: str, payloads: list[bytes]) -> None:
    """Publish each payload at QoS 1 on the device's telemetry topic and wait for PUBACKs."""
    client = _raw_client(stack.edge.host, stack.edge.device_port, device, password)
    try:
        for payload in payloads:
            client.publish(f"devices/{device}/telemetry", payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def _rejected(metrics: dict[str, float]) -> dict[str, float]:
    prefix = "cybernetic_ingest_rejected_total:reason="
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


def _alive(stack: Stack) -> None:
    assert stack.gateway_proc is not None
    assert stack.gateway_proc.poll() is None, stack.log("gateway")[-3000:]


HOSTILE = [
    b'{"values": {"x": 123456789012345678901234567890}}',  # 62 bytes: beyond 64 bits
    b'{"values": {"x": -9223372036854775809}}',
    b'{"values": {"x": ' + b"[" * 1000 + b"]" * 1000 + b"}}",  # 2 KB, 1,000 levels
    b'{"values": {"x": ' + b"{" * 20 + b"}" * 20 + b"}}",
    msgspec.msgpack.encode({"values": {"x": float("nan")}}),
    msgspec.msgpack.encode({"values": {"x": float("inf")}}),
    msgspec.msgpack.encode({"values": {"x": 2**64 - 1}}),
    msgspec.msgpack.encode({"values": {"x": msgspec.msgpack.Ext(7, b"ext")}}),
    b'{"values": {"x": "\xff\xfe"}}',  # invalid UTF-8
    b"\x81\xa6values\x81\xa1x\xc1",  # msgpack's never-used byte
    b"{" * 5000,
]


async def test_hostile_readings_are_dead_lettered_and_never_stop_the_gateway(
    tmp_path: Path,
) -> None:
    """Findings 1, 2 and 8: a value beyond 64 bits used to kill the gateway for good (and
    again after every restart, the broker redelivering it); 1,000-deep nesting froze ingest
    with paho re-raising on the same packet; msgpack NaN was stored as null. Each is now a
    refusal of that one message, acknowledged, and the good readings around them arrive."""
    stack = Stack(tmp_path / "stack")
    try:
        password = stack.add_device("dev-h")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        good = [
            msgspec.json.encode({"seq": i, "boot": "b1", "values": {"v": i}}) for i in range(1, 11)
        ]
        # good, hostile, good, hostile, ...: nothing bad may hold back what follows it
        mixed = [p for pair in zip(good, [*HOSTILE, b""][: len(good)], strict=True) for p in pair]
        mixed = [p for p in mixed if p] + HOSTILE[len(good) :]
        await asyncio.to_thread(_publish_raw, stack, "dev-h", password, mixed)
        assert await asyncio.to_thread(stack.wait_cloud_count, 10, 30) == 10
        m = await asyncio.to_thread(scrape, stack.gateway_metrics)
        assert sum(_rejected(m).values()) == len(HOSTILE), _rejected(m)
        assert _rejected(m).get("bad_shape", 0) >= 7
        _alive(stack)
        # a restart finds nothing to choke on: every hostile message was acknowledged
        stack.kill_gateway()
        stack.start_gateway()
        await asyncio.to_thread(stack.wait_gateway_ready)
        more = [msgspec.json.encode({"seq": i, "boot": "b1", "values": {"v": i}}) for i in (11, 12)]
        await asyncio.to_thread(_publish_raw, stack, "dev-h", password, more)
        assert await asyncio.to_thread(stack.wait_cloud_count, 12, 30) == 12
        _alive(stack)
        with_values = stack.cloud_keys()
        assert sorted(k[2] for k in with_values) == list(range(1, 13))
        assert "Traceback" not in stack.log("gateway")
    finally:
        await asyncio.to_thread(stack.close)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small filesystem of its own for the gateway's state (root only, as CI runs)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


async def test_full_disk_pauses_ingest_and_resumes_when_space_returns(tmp_path: Path) -> None:
    """Finding 5: with its state directory full the gateway exited within seconds (the real
    error hidden behind 'cannot rollback - no transaction is active') and never came back.
    Now it keeps running with ingest paused (the broker keeps the readings), says so in a
    metric, and stores and forwards everything once space returns: nothing is lost."""
    needs_root("mounting a tmpfs")
    stack = Stack(tmp_path / "stack")
    with _tmpfs(tmp_path / "stack" / "gateway", "16m") as state:
        try:
            password = stack.add_device("dev-d")
            stack.start()
            await asyncio.to_thread(stack.wait_gateway_ready)
            await publish_readings(
                stack.edge.host, stack.edge.device_port, "dev-d", password, range(1, 101)
            )
            assert await asyncio.to_thread(stack.wait_cloud_count, 100, 30) == 100
            filler = await asyncio.to_thread(_fill, state)
            await publish_readings(
                stack.edge.host, stack.edge.device_port, "dev-d", password, range(101, 2101)
            )
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                m = await asyncio.to_thread(scrape, stack.gateway_metrics)
                if m.get("cybernetic_outbox_storage_full") == 1:
                    break
                await asyncio.sleep(0.2)
            assert m.get("cybernetic_outbox_storage_full") == 1, stack.log("gateway")[-3000:]
            await asyncio.sleep(8)  # well past the old crash: still up, still paused
            _alive(stack)
            # no part of the gateway failed over it either (a supervisor gives up after a few)
            assert '"child failed"' not in stack.log("gateway"), stack.log("gateway")[-3000:]
            filler.unlink()
            assert await asyncio.to_thread(stack.wait_cloud_count, 2100, 60) == 2100
            assert sorted(k[2] for k in stack.cloud_keys()) == list(range(1, 2101))
            m = await asyncio.to_thread(scrape, stack.gateway_metrics)
            assert m["cybernetic_outbox_storage_full"] == 0
            _alive(stack)
            log = stack.log("gateway")
            assert "disk full" in log
            assert "cannot rollback" not in log
        finally:
            await asyncio.to_thread(stack.close)


async def test_cloud_killed_during_a_stream_is_caught_up_without_waiting_the_ack_timeout(
    tmp_path: Path,
) -> None:
    """Finding 8: after a cloud SIGKILL every earlier-stamped envelope was refused as stale and
    the gateway waited out ack_timeout (15-19 s stalls per restart). The cloud now answers an
    authentic stale batch with a nack and the gateway re-sends it at once, fresh: with an ack
    timeout of ten minutes, everything still arrives within seconds of the cloud's return."""
    stack = Stack(tmp_path / "stack", gateway={"uplink": {"ack_timeout": 600.0}})
    try:
        password = stack.add_device("dev-c")
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        await publish_readings(
            stack.edge.host, stack.edge.device_port, "dev-c", password, range(1, 201)
        )
        assert await asyncio.to_thread(stack.wait_cloud_count, 200, 30) == 200
        stack.kill_cloud()
        # sent while the cloud is away: they wait in its broker session, stamped before the
        # cloud's unclean restart
        await publish_readings(
            stack.edge.host, stack.edge.device_port, "dev-c", password, range(201, 701)
        )
        await asyncio.sleep(1)
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        assert await asyncio.to_thread(stack.wait_cloud_count, 700, 45) == 700
        assert sorted(k[2] for k in stack.cloud_keys()) == list(range(1, 701))
        c = await asyncio.to_thread(scrape, stack.cloud_metrics)
        assert c.get("cybernetic_cloud_batch_nacks_total:reason=stale", 0) >= 1
    finally:
        await asyncio.to_thread(stack.close)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _flood_names(stack: Stack, names: int) -> None:
    """One reading from each of ``names`` distinct devices (the service account may publish
    under any device's topic), QoS 1, acknowledged by the broker."""
    client = _raw_client(
        stack.edge.host, stack.edge.port, "gateway", stack.edge.password("gateway")
    )
    try:
        infos = []
        for i in range(names):
            payload = b'{"seq": 1, "boot": "b", "values": {"v": 1}}'
            infos.append(client.publish(f"devices/flood-{i}/telemetry", payload, qos=1))
            if len(infos) >= 500:
                for info in infos:
                    info.wait_for_publish(30)
                infos.clear()
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.slow
async def test_fifty_thousand_device_names_keep_gateway_memory_flat(tmp_path: Path) -> None:
    """Finding 7: 50,000 distinct names (auto-registration on) grew the gateway from 47 to
    158 MiB and still growing. Now at most [ingest] max_devices are taken (the rest refused and
    counted) and S2's tables are capped: memory stays flat and the gateway stays up."""
    stack = Stack(tmp_path / "stack", gateway={"ingest": {"max_devices": 5000}})
    try:
        stack.start()
        await asyncio.to_thread(stack.wait_gateway_ready)
        assert stack.gateway_proc is not None
        await asyncio.to_thread(_flood_names, stack, 2000)  # warm up: imports, caches, pages
        assert await asyncio.to_thread(stack.wait_cloud_count, 2000, 60) == 2000
        before = _rss_mib(stack.gateway_proc.pid)
        await asyncio.to_thread(_flood_names, stack, 50_000)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            m = await asyncio.to_thread(scrape, stack.gateway_metrics)
            if sum(_rejected(m).values()) >= 45_000:  # counted after each batch's commit
                break
            await asyncio.sleep(0.5)
        assert m["cybernetic_ingest_messages_total"] == 52_000
        # flood-0..1999 again (known), flood-2000..4999 new, the other 45,000 refused
        assert _rejected(m) == {"too_many_devices": 45_000}
        assert await asyncio.to_thread(stack.wait_cloud_count, 5000, 60) == 5000
        grown = _rss_mib(stack.gateway_proc.pid) - before
        assert grown < 30, f"gateway RSS grew {grown:.1f} MiB over 50,000 names"
        _alive(stack)
    finally:
        await asyncio.to_thread(stack.close)
