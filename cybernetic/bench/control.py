"""`cybernetic bench control`: the control plane reaching the edge, against its references.

Three figures, each beside the reference it rides on, measured in the same run (issue 20,
"Benchmark"); ``--runs`` times on fresh brokers and daemons, medians reported:

- **push to effect**: a limit row written in the running cloud through its control socket
  (as ``cybernetic fleet limit set`` does) until the gateway puts it in its rate gate. The
  start is the wall clock just before the request is sent; the effect is the ``ts`` of the
  gateway's own log record ``limits from the store applied`` naming that row (made by
  :class:`~gateway.s2.limit_rows.LimitRows` right after it set the gate; millisecond
  resolution, truncated), so the time this process takes to notice it does not count.
  ``--pushes`` pushes, one at a time, each to its own key, each after the sync pump went
  idle (:data:`PUSH_GAP_S`). Reference: a bare paho QoS 1
  publish to a subscriber on the same cloud broker (the sync path rides on the same broker
  hop, and waits ``[sync] live_delay`` before it sends: reported as ``sync_live_delay_ms``).
- **bundle verify + swap**: a bundle signed with a real Ed25519 key, put in a real store and
  taken by the gateway's watcher (:class:`~gateway.policy_bundles.PolicyBundles`: verify,
  load the agent, swap it into a :class:`~wasm.stage.PolicyStage`); its own ``swap_ms``.
  Reference: ``PolicyAgent.load`` of the same wasm alone (``raw_load_ms``).
- **algedonic overtakes the backlog**: as tests/e2e/test_urgent_e2e.py, with ``--backlog``
  readings in the gateway's outbox while the cloud broker is down, a rule raises a pain
  signal; when the link returns, ``algedonic_position`` counts the backlog readings the
  cloud stored no later than the signal (by ``stored_ms``; readings committed in the same
  millisecond count as before it, and are reported as ``algedonic_ties``: a small backlog
  may land whole in the signal's commit, which is no overtaking).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion

from amcp import bundles
from amcp.crypto.keyring import Keyring
from amcp.crypto.keys import Ed25519Signer, now_ms
from amcp.runtime.logs import parse_timestamp
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import SessionSpec, connect_once
from amcp.runtime.settings import BrokerLink
from amcp.store import Store
from amcp.sync.settings import SyncSettings
from amcp.wire.messages import PolicyBundle
from cloud.control import SOCKET_NAME, LimitSet, send
from cybernetic.bench import progress
from cybernetic.bench.policy import FALLBACK_POLICY, POLICY
from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape
from gateway.policy_bundles import PolicyBundles, pass_all_stage
from wasm import PolicyAgent, compile_policy
from wasm.sandbox import AgentLimits

DESCRIPTION = (
    "control plane: cloud limit push to gateway effect vs a bare MQTT round trip, "
    "bundle verify+swap vs a raw agent load, algedonic signal vs an outbox backlog"
)
GATEWAY = "bench"
APPLIED_MSG = "limits from the store applied"
RULES = {
    "patterns": {
        "smoke": {"when": "smoke > 0", "actions": [{"type": "algedonic", "reason": "smoke"}]}
    }
}
TARGETS = {"push_to_effect_ms_p99": 500.0, "bundle_verify_swap_ms": 50.0}
BARE_SAMPLES = 100
BUNDLE_SAMPLES = 20
PUSH_GAP_S = 0.15
"""Pause after each push took effect, longer than ``[sync] live_delay`` plus the gateway's
acknowledgement: the next push meets an idle sync pump, as an operator's push would. (A push
sent while the pump still sleeps on the last push's acknowledgement would ride that sleep and
look faster than a push ever is.)"""
PUSH_TIMEOUT_S = 15.0
DAY_MS = 86_400_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pushes",
        type=int,
        default=100,
        help="limit rows pushed per run, one at a time (each waited for on the gateway)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=50_000,
        help="readings waiting in the gateway's outbox when the algedonic signal is raised",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="runs, each on fresh brokers and daemons; medians are reported",
    )


def _quantiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) of the samples."""
    if len(samples) < 2:
        return samples[0], samples[0]
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples), q[98]


# -- the reference: a bare MQTT round trip on the cloud broker ------------------------------
def _bare_round_trips(stack: Stack, n: int) -> list[float]:
    """Milliseconds from a paho QoS 1 publish to its arrival at a paho subscriber."""
    broker = stack.cloud_broker
    topic = "bench/control/ping"
    arrived = threading.Event()
    subscribed = threading.Event()
    at: list[float] = []

    def on_message(_c: paho.Client, _u: object, _m: paho.MQTTMessage) -> None:
        at.append(time.perf_counter())
        arrived.set()

    def on_subscribe(*_args: object) -> None:
        subscribed.set()

    def client(name: str) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=name)
        c.username_pw_set("cloud", broker.password("cloud"))
        c.connect(broker.host, broker.port)
        c.loop_start()
        return c

    sub = client("bench-control-sub")
    pub = client("bench-control-pub")
    try:
        sub.on_message = on_message
        sub.on_subscribe = on_subscribe
        sub.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("the bare subscriber got no SUBACK from the cloud broker")
        out: list[float] = []
        for i in range(n + 1):  # the first one warms the path up and is not counted
            arrived.clear()
            t0 = time.perf_counter()
            pub.publish(topic, b"ping %d" % i, qos=1)
            if not arrived.wait(10):
                raise RuntimeError("a bare publish did not arrive within 10 s")
            if i:
                out.append((at[-1] - t0) * 1000)
        return out
    finally:
        for c in (pub, sub):
            c.loop_stop()
            c.disconnect()


# -- the subject: a limit row from the cloud's control socket to the gateway's gate ---------
class _LogTail:
    """New JSON records of a daemon's log file, from where it ended when made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self._partial = b""

    def records(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
        return out


def _applied_at(tail: _LogTail, key: str, timeout: float) -> float:
    """Unix seconds at which the gateway logged applying the row ``key``."""
    deadline = time.monotonic() + timeout
    while True:
        for rec in tail.records():
            if rec.get("msg") == APPLIED_MSG and key in rec.get("changed", ()):
                return parse_timestamp(str(rec["ts"]))
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway did not apply {key} within {timeout} s")
        time.sleep(0.002)


@dataclass
class _Pushes:
    effect_ms: list[float] = field(default_factory=list)
    write_ms: list[float] = field(default_factory=list)


def _push_limits(stack: Stack, n: int) -> _Pushes:
    """``n`` limit rows (plus one to warm up), each until the gateway applied it."""
    socket = stack.state / "cloud" / SOCKET_NAME
    tail = _LogTail(stack.state / "gateway.log")
    out = _Pushes()
    for i in range(n + 1):
        request = LimitSet(
            target=f"gw/{GATEWAY}", key=f"device/push-{i:04d}", rate=1000 + i, burst=10
        )
        t0 = time.time()
        answer = send(socket, request)
        written_at = time.time()
        if not answer.ok or answer.written is None:
            raise RuntimeError(f"the cloud refused the limit: {answer.error} {answer.detail}")
        effect = _applied_at(tail, answer.written.key, PUSH_TIMEOUT_S)
        if i:  # the first push also waits for the first sync round: not counted
            out.effect_ms.append((effect - t0) * 1000)
            out.write_ms.append((written_at - t0) * 1000)
        time.sleep(PUSH_GAP_S)
    applied = scrape(stack.gateway_metrics).get("cybernetic_s2_limit_rows_total:outcome=applied")
    if applied != n + 1:
        raise RuntimeError(f"the gateway counts {applied} limits rows applied, not {n + 1}")
    return out


# -- the algedonic signal against a backlog --------------------------------------------------
async def _smoke(stack: Stack, password: str) -> None:
    login = BrokerLink(port=stack.device_port, username="alarm", password=password)
    body = json.dumps({"seq": 1, "boot": "b1", "values": {"smoke": 1}}).encode()
    async with connect_once(MqttTransport(), login, SessionSpec("alarm")) as link:
        await link.publish("devices/alarm/telemetry", body, qos=1)


def _signal_position(stack: Stack) -> tuple[int, int] | None:
    """Backlog readings stored before the first algedonic event and those stored in the same
    millisecond (None: no such event stored yet)."""
    if not stack.cloud_db.exists():
        return None
    with contextlib.closing(sqlite3.connect(stack.cloud_db, timeout=10)) as db:
        try:
            row = db.execute(
                "SELECT stored_ms FROM events WHERE name = 'algedonic' ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            before, ties = db.execute(
                "SELECT count(*) FILTER (WHERE stored_ms < ?1),"
                " count(*) FILTER (WHERE stored_ms = ?1)"
                " FROM readings WHERE device = 'dev-1'",
                (row[0],),
            ).fetchone()
        except sqlite3.OperationalError:
            return None
    return int(before), int(ties)


async def _algedonic(stack: Stack, passwords: dict[str, str], backlog: int) -> tuple[int, int]:
    """(position, ties) of the signal among the backlog's readings as the cloud stored them."""
    stack.cloud_broker.stop()  # an outage: the backlog builds up in the outbox
    progress(f"cloud broker down; {backlog:,} readings into the gateway's outbox")
    await publish_readings(
        stack.edge.host,
        stack.device_port,
        "dev-1",
        passwords["dev-1"],
        range(1, backlog + 1),
        window=500,
    )
    deadline = time.monotonic() + 120 + backlog / 500
    while time.monotonic() < deadline:
        metrics = await asyncio.to_thread(scrape, stack.gateway_metrics)
        if metrics.get("cybernetic_outbox_rows", 0) >= backlog:
            break
        await asyncio.sleep(0.2)
    else:
        raise TimeoutError("the backlog never filled the gateway's outbox")
    await _smoke(stack, passwords["alarm"])
    await asyncio.sleep(1.0)  # the rule fires; the signal waits on the urgent lane
    stack.cloud_broker.start()
    progress("cloud broker back; waiting for the backlog and the signal to land")
    stored = await asyncio.to_thread(stack.wait_cloud_count, backlog + 1, 180 + backlog / 200)
    if stored < backlog + 1:
        raise TimeoutError(f"only {stored} of {backlog + 1} readings reached the cloud")
    deadline = time.monotonic() + 30
    while (found := await asyncio.to_thread(_signal_position, stack)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no algedonic event in the cloud: {stack.log('gateway')[-2000:]}")
        await asyncio.sleep(0.1)
    before, ties = found
    return before + ties, ties  # a tie counts as stored before the signal


# -- bundle verify + load + swap, against a raw load -----------------------------------------
def _policy_source() -> str:
    return POLICY.read_text(encoding="utf-8") if POLICY.exists() else FALLBACK_POLICY


async def _bundle_swaps(state: Path, n: int) -> tuple[list[float], list[float]]:
    """(watcher swap_ms, raw PolicyAgent.load ms), ``n`` each, interleaved."""
    source = _policy_source()
    wasm = compile_policy(source).wasm
    signer = Ed25519Signer.generate("cloud")
    limits = AgentLimits()
    swaps: list[float] = []
    raws: list[float] = []
    async with Store(state / "store.sqlite3", site=GATEWAY) as store:
        stage = pass_all_stage("keep", None)
        watcher = PolicyBundles(
            store, stage, Keyring([signer.entry()]), zone="", memory_bytes=limits.memory_bytes
        )
        for version in range(1, n + 2):
            t0 = time.perf_counter()
            PolicyAgent.load(wasm, limits=limits)
            raw = (time.perf_counter() - t0) * 1000
            issued = now_ms()
            bundle = PolicyBundle(
                name="bench",
                version=version,
                expires_ms=issued + DAY_MS,
                body=wasm,
                source=source,
                issued_ms=issued,
            )
            key = bundles.bundle_key(bundle.name, bundle.zone)
            await store.put(bundles.NAMESPACE, key, bundles.sign(bundle, signer))
            before = stage.agent
            if not await watcher.refresh() or stage.agent is before:
                raise RuntimeError(f"bundle version {version} was not swapped in")
            if version > 1:  # the first warms the engine and the worker thread
                swaps.append(watcher.swap_ms)
                raws.append(raw)
    return swaps, raws


# -- one run ---------------------------------------------------------------------------------
@dataclass
class _Run:
    bare_ms: list[float]
    pushes: _Pushes
    swap_ms: list[float]
    raw_load_ms: list[float]
    position: int
    ties: int


async def _one_run(args: argparse.Namespace, state: Path) -> _Run:
    stack = Stack(state / "stack", gateway_id=GATEWAY, gateway={"rules": RULES})
    try:
        passwords = {d: stack.add_device(d) for d in ("dev-1", "alarm")}
        await asyncio.to_thread(stack.start)
        await asyncio.to_thread(stack.wait_gateway_ready)
        bare = await asyncio.to_thread(_bare_round_trips, stack, BARE_SAMPLES)
        progress(f"bare MQTT round trip on the cloud broker: p50 {statistics.median(bare):.2f} ms")
        pushes = await asyncio.to_thread(_push_limits, stack, args.pushes)
        p50, p99 = _quantiles(pushes.effect_ms)
        progress(f"{args.pushes} limit pushes, cloud to gateway: p50 {p50:.1f} ms, p99 {p99:.1f}")
        position, ties = await _algedonic(stack, passwords, args.backlog)
        progress(
            f"algedonic signal landed after {position:,} of {args.backlog:,} readings"
            f" ({ties:,} of them stored in the same millisecond)"
        )
    finally:
        await asyncio.to_thread(stack.close)
    swaps, raws = await _bundle_swaps(state, BUNDLE_SAMPLES)
    progress(
        f"bundle verify+load+swap {statistics.median(swaps):.2f} ms, "
        f"raw load {statistics.median(raws):.2f} ms"
    )
    return _Run(bare, pushes, swaps, raws, position, ties)


def run(args: argparse.Namespace) -> dict[str, object]:
    results: list[_Run] = []
    for i in range(args.runs):
        progress(f"run {i + 1}/{args.runs}")
        with tempfile.TemporaryDirectory(prefix="cybernetic-bench-control-") as tmp:
            results.append(asyncio.run(_one_run(args, Path(tmp))))
    push = [_quantiles(r.pushes.effect_ms) for r in results]
    bare = [_quantiles(r.bare_ms) for r in results]
    push_p50 = statistics.median(p for p, _ in push)
    push_p99 = statistics.median(p for _, p in push)
    bare_p50 = statistics.median(p for p, _ in bare)
    swap = statistics.median(statistics.median(r.swap_ms) for r in results)
    raw = statistics.median(statistics.median(r.raw_load_ms) for r in results)
    positions = [r.position for r in results]
    overtakes = all(p < args.backlog for p in positions)
    return {
        "runs": args.runs,
        "pushes": args.pushes,
        "backlog": args.backlog,
        "push_to_effect_ms_p50": round(push_p50, 1),
        "push_to_effect_ms_p99": round(push_p99, 1),
        "push_to_effect_ms_max": round(max(max(r.pushes.effect_ms) for r in results), 1),
        "control_write_ms_p50": round(
            statistics.median(statistics.median(r.pushes.write_ms) for r in results), 2
        ),
        "sync_live_delay_ms": round(SyncSettings().live_delay * 1000, 1),
        "bare_round_trip_ms_p50": round(bare_p50, 3),
        "bare_round_trip_ms_p99": round(statistics.median(p for _, p in bare), 3),
        "push_ratio_p50": round(push_p50 / bare_p50, 1),
        "push_ratios_p50": [round(p[0] / b[0], 1) for p, b in zip(push, bare, strict=True)],
        "bundle_verify_swap_ms": round(swap, 2),
        "raw_load_ms": round(raw, 2),
        "bundle_ratio": round(swap / raw, 2),
        "algedonic_overtakes_backlog": overtakes,
        "algedonic_position": max(positions),
        "algedonic_positions": positions,
        "algedonic_ties": [r.ties for r in results],
        "targets_met": {
            "push_to_effect_ms_p99": push_p99 <= TARGETS["push_to_effect_ms_p99"],
            "bundle_verify_swap_ms": swap <= TARGETS["bundle_verify_swap_ms"],
            "algedonic_overtakes_backlog": overtakes,
        },
    }
