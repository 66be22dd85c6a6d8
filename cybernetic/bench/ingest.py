"""`cybernetic bench ingest`: how close the gateway drains a backlog to a bare MQTT subscriber.

Reference and subject face the same work: N readings are queued in the local broker for two
persistent sessions while their consumers are away. Then (reference) a bare aiomqtt
subscriber drains its session, and (subject) the gateway drains its own through the SQLite
outbox and the uplink into the cloud store, durably (the time runs from the gateway's ingest
subscription to the cloud's commit of the last reading). Afterwards readings are offered
live at half the measured gateway rate to measure end-to-end latency (device timestamp to
cloud commit). Repeated ``--runs`` times on fresh brokers; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt

from amcp.runtime.logs import parse_timestamp
from amcp.wire import topics
from cloud.readings import last_stored_ms, storage_delays_ms
from cybernetic.bench import progress
from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape

DESCRIPTION = "gateway drain rate vs a bare aiomqtt subscriber, latency, loss, RSS"
TOPIC = topics.DEVICE_TELEMETRY_FILTER


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--live-seconds", type=float, default=5.0)


async def _make_session(stack: Stack, client_id: str) -> None:
    async with aiomqtt.Client(
        stack.edge.host,
        stack.edge.port,
        username="gateway",
        password=stack.edge.password("gateway"),
        identifier=client_id,
        clean_session=False,
    ) as c:
        await c.subscribe(TOPIC, qos=1)


async def _raw_drain(stack: Stack, n: int) -> float:
    t0 = time.perf_counter()
    got = 0
    async with aiomqtt.Client(
        stack.edge.host,
        stack.edge.port,
        username="gateway",
        password=stack.edge.password("gateway"),
        identifier="bench-raw",
        clean_session=False,
    ) as c:
        async for _ in c.messages:
            got += 1
            if got >= n:
                break
    return n / (time.perf_counter() - t0)


def _rss_mb(pid: int) -> float:
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    kids = [int(x) for x in text.split()]
    return kids + [g for k in kids for g in _children(k)]


def _subscribed_at(stack: Stack) -> float:
    for line in stack.log("gateway").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if rec.get("msg") == "ingest subscribed":
                return parse_timestamp(rec["ts"])
    raise RuntimeError("gateway never logged its ingest subscription")


async def _publish(
    stack: Stack, devices: dict[str, str], n: int, boot: str, rate: float | None
) -> None:
    per = n // len(devices)
    await asyncio.gather(
        *(
            publish_readings(
                stack.edge.host,
                stack.device_port,
                d,
                pw,
                range(1, per + 1),
                boot=boot,
                rate=rate / len(devices) if rate else None,
            )
            for d, pw in devices.items()
        )
    )


async def _one_run(args: argparse.Namespace, state: Path) -> dict[str, float]:
    n = args.messages - args.messages % args.devices
    with Stack(state, gateway_id="bench") as stack:
        devices = {
            f"bench-{i:03d}": stack.add_device(f"bench-{i:03d}") for i in range(args.devices)
        }
        stack.start_brokers()
        await _make_session(stack, "bench-raw")
        await _make_session(stack, "bench-ingest")  # the gateway's own persistent session
        progress(f"queueing {n} readings for both sessions")
        await _publish(stack, devices, n, "backlog", None)
        await asyncio.sleep(0.5)
        raw = await _raw_drain(stack, n)
        progress(f"bare aiomqtt subscriber: {raw:,.0f} msg/s")
        stack.start_cloud()
        stack.wait_cloud_ready()  # both sides start as a deployed fleet would: cloud first
        stack.start_gateway()
        assert stack.gateway_proc is not None
        rss = 0.0
        deadline = time.monotonic() + 300
        while stack.cloud_count() < n and time.monotonic() < deadline:
            rss = max(rss, _rss_mb(stack.gateway_proc.pid))
            await asyncio.sleep(0.1)
        last_commit_ms = last_stored_ms(stack.cloud_db)
        gw = n / max(1e-6, last_commit_ms / 1000 - _subscribed_at(stack))
        progress(f"gateway through outbox and uplink into the cloud store: {gw:,.0f} msg/s")
        live_rate = gw / 2
        live_n = int(live_rate * args.live_seconds)
        live_n -= live_n % args.devices
        await _publish(stack, devices, live_n, "live", live_rate)
        stack.wait_cloud_count(n + live_n, 60)
        rss = max(rss, _rss_mb(stack.gateway_proc.pid))
        lat = sorted(storage_delays_ms(stack.cloud_db, "live"))
        count = stack.cloud_count()
        dups = scrape(stack.cloud_metrics).get("cybernetic_cloud_duplicate_readings_total", 0.0)
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [0.0] * 99
        return {
            "raw": raw,
            "gateway": gw,
            "lost": float(n + live_n - count),
            "duplicates": dups,
            "p50": q[49],
            "p99": q[98],
            "rss": rss,
            "live_rate": live_rate,
        }


def run(args: argparse.Namespace) -> dict[str, object]:
    results = []
    for i in range(args.runs):
        progress(f"run {i + 1}/{args.runs}")
        with tempfile.TemporaryDirectory(prefix="cybernetic-bench-ingest-") as tmp:
            results.append(asyncio.run(_one_run(args, Path(tmp))))
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    ratios = [r["gateway"] / r["raw"] for r in results]
    return {
        "messages": args.messages - args.messages % args.devices,
        "runs": args.runs,
        "raw_msgs_per_s": round(med["raw"]),
        "gateway_msgs_per_s": round(med["gateway"]),
        "ratio": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "lost": int(max(r["lost"] for r in results)),
        "duplicates": int(max(r["duplicates"] for r in results)),
        "p50_ms": round(med["p50"], 1),
        "p99_ms": round(med["p99"], 1),
        "live_msgs_per_s": round(med["live_rate"]),
        "gateway_rss_mb": round(max(r["rss"] for r in results), 1),
    }
