"""`cybernetic demo`: the product on an embedded default, on one machine.

A :class:`~cybernetic.stack.Stack` (the gateway's local broker, the cloud broker, the cloud
and gateway daemons as real processes) plus simulated devices publishing telemetry under their
own credentials. While it runs it prints what is flowing with its rates, and the pattern
alerts, policy flags and other events as they happen; at the end a summary accounts for every
published reading (stored in the cloud, refused with its reason, dropped, or still in flight).
Partway through (:data:`LIMIT_AT_S`) it sets a per-device limit from the cloud, the way
``cybernetic fleet limit set`` does, and shows it taking effect on the gateway.

Stopping always works and leaves nothing behind:

- After ``--duration`` seconds, or at the first SIGINT (Ctrl-C) or SIGTERM, the devices stop,
  in-flight readings get :data:`DRAIN_S` to reach the cloud, the summary is printed and the
  daemons and brokers are stopped cleanly. That whole stop is bounded by
  :data:`STOP_GRACE_S`; past it, or at a second SIGINT or SIGTERM, every process of the demo
  is killed at once.
- Every process the demo starts, and every process those start, carries a tag in its
  environment (:data:`TAG_VAR`). A guardian process, started first, waits for the demo to end
  (its pipe closes when the demo exits, however it dies, SIGKILL included) and then kills every
  tagged process left (:func:`sweep`). The tag, unlike ``PR_SET_PDEATHSIG``, also reaches
  processes the demo does not spawn itself (the brokers, ``mosquitto_passwd``, grandchildren)
  and needs no ``preexec_fn`` in a process that runs threads.

Exit codes (:data:`cybernetic.cli.EXIT_CODES`): 0 after a clean stop (at its duration or on
the first signal), 1 when the demo could not run, 2 for invalid options, 128 + the signal's
number after a forced stop (130 for Ctrl-C, 143 for SIGTERM; 1 when the bound ran out).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.session import LinkLostError, SessionSpec, connect_once
from amcp.runtime.settings import BrokerLink
from amcp.runtime.supervisor import stop_task
from amcp.wire import topics
from cloud.control import SOCKET_NAME, Answer, AppliedQuery, LimitSet, Request, send
from cybernetic.cli import FAILED, OK, USAGE, one_line
from cybernetic.mosquitto import free_port
from cybernetic.stack import CloudEvent, Stack, scrape
from gateway.s1.responder import DeviceResponder
from gateway.s1.simulated import temperature_handlers

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_CAPABILITY = {
    "name": "temp.sample",
    "device": "sensor-01",
    "action": "sample",
    "description": "stream n temperature samples from sensor-01, then their mean",
    "timeout": 30.0,
    "input_schema": {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 100},
            "interval": {"type": "number", "minimum": 0, "maximum": 5},
        },
    },
}

MAX_DEVICES = 100
"""Each simulated device is a broker account and a connection of its own."""
MAX_INTERVAL_S = 3600.0
ACCOUNT_EVERY_S = 2.0
"""How often the account line (counts and rates) is printed."""
POLL_S = 0.5
"""How often events and policy flags are looked for (they are shown as they happen)."""
DRAIN_S = 5.0
"""How long the stop waits for readings still on their way to reach the cloud."""
STOP_GRACE_S = 25.0
"""Bound on a whole clean stop (devices, drain, summary, daemons, brokers); then a forced one."""
START_TIMEOUT_S = 30.0
RECONNECT_S = 1.0
LIMIT_AT_S = 6.0
"""When the demo sets a per-device limit from the cloud (after the intent's stream)."""
LIMIT_EFFECT_S = 20.0
"""How long it looks for the limit's effect before saying it did not see it."""
DEVICE_REFUSED = "cybernetic_s2_rate_decisions_total{result=refused,scope=device}"
"""Readings over their device's S2 limit (the key :func:`metrics` gives that sample)."""
BUDGET_REFUSED = "cybernetic_s2_rate_decisions_total{result=refused,scope=total}"
"""Readings over the gateway's total S2 budget."""
TAG_VAR = "CYBERNETIC_DEMO_RUN"
EVENTS_LINE = (
    "events: what the gateway itself reports to the cloud beside the readings"
    " (pattern alerts, policy flags, S2 detections, rule reloads)"
)


def _gateway_overrides(machines: list[dict[str, object]] | None = None) -> dict[str, object]:
    overrides: dict[str, object] = {"s1": {"capabilities": [DEMO_CAPABILITY]}}
    if machines:  # a simulated OPC-UA press and Modbus meter, read by the gateway's bridge
        overrides["bridge"] = {"devices": machines}
    policy = EXAMPLES / "policies" / "demo.policy"
    if policy.exists():  # shipped with the source tree
        overrides["policy"] = {"file": str(policy)}
    patterns = EXAMPLES / "patterns" / "demo.toml"
    if patterns.exists():
        overrides["rules"] = {"files": [str(patterns)]}
    return overrides


@dataclass
class DemoOptions:
    duration: float | None = None
    devices: int = 5
    interval: float = 0.5
    state_dir: Path | None = None
    quiet: bool = False

    def problem(self) -> str | None:
        """What is wrong with these options, in one line that says what to do; None if fine."""
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            return (
                f"--duration must be a positive number of seconds (got {self.duration:g});"
                " leave it out to run until Ctrl-C"
            )
        if not 1 <= self.devices <= MAX_DEVICES:
            return f"--devices must be between 1 and {MAX_DEVICES} (got {self.devices})"
        if not (math.isfinite(self.interval) and 0 <= self.interval <= MAX_INTERVAL_S):
            return (
                f"--interval must be between 0 and {MAX_INTERVAL_S:g} seconds"
                f" (got {self.interval:g}); 0 publishes as fast as the broker acknowledges"
            )
        return self._state_dir_problem()

    def _state_dir_problem(self) -> str | None:
        if self.state_dir is None:
            return None
        path = self.state_dir
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            what = "is" if existing == path else f"is under {existing}, which is"
            return f"--state-dir {path} {what} a file, not a folder: name a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"--state-dir {path}: {existing} is not writable; name a folder you can write"
        return None


class DemoError(Exception):
    """The demo cannot run or go on: the message is the one line the user sees, ``code``
    the exit code (:data:`cybernetic.cli.EXIT_CODES`)."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- processes: the tag, the guardian and the sweep ----------------------------------------
def sweep(tag: str) -> list[int]:
    """Kill (SIGKILL) every process whose environment holds the entry ``tag``, except the
    caller; the pids killed. Self-contained: the guardian runs its source on its own."""
    import os  # noqa: PLC0415 - the guardian runs this function's source alone
    import signal  # noqa: PLC0415

    me, needle, killed = os.getpid(), tag.encode(), []
    for _ in range(5):  # again, for processes forked while the last round ran
        found = []
        for name in os.listdir("/proc"):  # noqa: PTH208 - standalone, as above
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:  # noqa: PTH123 - no pathlib there
                    environ = f.read()
            except OSError:  # gone, or another user's
                continue
            if needle in environ.split(b"\0"):
                found.append(int(name))
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
            killed.append(pid)
        if not found:
            break
    return killed


def guard(tag: str, remove: str) -> None:
    """The guardian: wait until the demo's end closes the pipe on stdin, then kill every
    tagged process left and remove the demo's temporary folder (``remove``, if any, unless
    the demo said ``keep``)."""
    import os  # noqa: PLC0415 - run from its source alone, see sweep
    import shutil  # noqa: PLC0415

    said = b""
    while chunk := os.read(0, 4096):
        said += chunk
    sweep(tag)
    if remove and b"keep" not in said:
        shutil.rmtree(remove, ignore_errors=True)


class Reaper:
    """Tags the demo's processes and guarantees that none outlives it (see the module doc)."""

    def __init__(self, remove: Path | None) -> None:
        self.tag = f"{TAG_VAR}={os.urandom(8).hex()}"
        source = (
            "\n".join(textwrap.dedent(inspect.getsource(fn)) for fn in (sweep, guard))
            + f"\nguard({self.tag!r}, {str(remove or '')!r})\n"
        )
        # before the tag is set, so the guardian itself is not tagged; a session of its own,
        # so a Ctrl-C meant for the demo does not end it first
        self.guardian = subprocess.Popen(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-I", "-c", source],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._previous = os.environ.get(TAG_VAR)
        os.environ[TAG_VAR] = self.tag.split("=", 1)[1]

    def kill_all(self) -> list[int]:
        """Kill every tagged process now (a forced stop, or leftovers after a clean one)."""
        return sweep(self.tag)

    def close(self, *, keep: bool = False) -> None:
        """At the end: kill any leftover, untag this process, let the guardian go (``keep``:
        it must not remove the temporary folder)."""
        self.kill_all()
        if self._previous is None:
            os.environ.pop(TAG_VAR, None)
        else:
            os.environ[TAG_VAR] = self._previous
        if self.guardian.stdin is not None:
            with contextlib.suppress(OSError):
                if keep:
                    self.guardian.stdin.write(b"keep")
                self.guardian.stdin.close()
        try:
            self.guardian.wait(5.0)
        except subprocess.TimeoutExpired:
            self.guardian.kill()
            self.guardian.wait()


class Stopper:
    """The stop that always works: the first SIGINT or SIGTERM asks for a clean stop, the
    second (or a clean stop that outlasts :data:`STOP_GRACE_S`) kills everything at once.

    The handlers are plain ``signal`` handlers, not the event loop's: they run even while the
    loop is busy in a blocking start-up step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, reaper: Reaper, out: Output) -> None:
        self.reaper = reaper
        self.out = out
        self.signum = 0
        self._loop = asyncio.get_running_loop()
        self._requested = asyncio.Event()
        self._watchdog: threading.Timer | None = None
        self._previous: dict[int, object] = {}

    def stopping(self) -> bool:
        """A stop was asked for (a signal, the duration, a failure)."""
        return bool(self.signum) or self._requested.is_set()

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum:
            self.force(signum, f"second {signal.Signals(signum).name}")
        self.signum = signum
        self._loop.call_soon_threadsafe(self.begin)

    def begin(self) -> None:
        """Start the clean stop (once: at the duration, a signal or a failure, whichever is
        first); the watchdog bounds it from now on."""
        if self._watchdog is not None:
            return
        self._requested.set()
        self._watchdog = threading.Timer(
            STOP_GRACE_S, self.force, (0, f"the stop took longer than {STOP_GRACE_S:g} s")
        )
        self._watchdog.daemon = True
        self._watchdog.start()
        if self.signum:
            self.out.stream(
                f"{signal.Signals(self.signum).name}: stopping cleanly (within"
                f" {STOP_GRACE_S:g} s); press Ctrl-C again to stop at once"
            )

    def force(self, signum: int, why: str) -> None:
        """Kill every process of the demo and exit now (from a signal handler or a thread)."""
        with contextlib.suppress(OSError):
            os.write(2, f"cybernetic demo: {why}: killing every process of the demo\n".encode())
        self.reaper.kill_all()
        os._exit(128 + signum if signum else 1)

    async def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a stop is asked for."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._requested.wait(), max(0.0, seconds))


# -- output ----------------------------------------------------------------------------------
class Output:
    """The stream (suppressed by ``--quiet``) and the summary (always)."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet

    @staticmethod
    def _write(text: str) -> None:
        with contextlib.suppress(OSError):  # a closed terminal must not stop the stop
            print(text, flush=True)

    def stream(self, text: str) -> None:
        if not self.quiet:
            self._write(text)

    def summary(self, text: str) -> None:
        self._write(text)


# -- simulated devices -------------------------------------------------------------------
class Publisher(Protocol):
    """What a device needs of its connection: a session :class:`~amcp.runtime.session.Link`,
    or the connection :class:`~gateway.s1.responder.DeviceResponder` shares with it."""

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None: ...


class SimulatedDevice:
    """Publishes temperature and humidity readings with a boot id and a seq."""

    def __init__(self, name: str, interval: float, broker: BrokerLink) -> None:
        self.name = name
        self.interval = interval
        self.broker = broker
        self.boot = f"{name}-{int(time.time())}"
        self.published = 0
        """Readings the edge broker acknowledged."""
        self.reconnects = 0
        self.last_error = ""
        self.stopped = False
        self.idle = asyncio.Event()
        """Set while no stream loop runs (clear during one, even one whose cancellation a
        library swallowed)."""
        self.idle.set()
        self._temp = random.uniform(18, 24)

    async def run(self) -> None:
        """Publish until stopped; like a real device, connect again when the link is lost."""
        spec = SessionSpec(client_id=self.name)  # the broker makes a device's id its username
        while not self.stopped:
            try:
                async with connect_once(MqttTransport(), self.broker, spec) as link:
                    await self.stream(link)
            except LinkLostError as exc:
                self.reconnects += 1
                self.last_error = str(exc)
                await asyncio.sleep(RECONNECT_S)

    def stop(self) -> None:
        """Stop publishing after the reading on its way (it is counted once acknowledged)."""
        self.stopped = True

    async def stream(self, link: Publisher) -> None:
        """Publish readings on an open connection until stopped (or cancelled)."""
        self.idle.clear()
        try:
            while not self.stopped:
                self._temp += random.uniform(-0.3, 0.3)
                payload = {
                    "seq": self.published + 1,
                    "boot": self.boot,
                    "ts": int(time.time() * 1000),
                    "values": {
                        "temp": round(self._temp, 2),
                        "humidity": round(random.uniform(30, 60), 1),
                    },
                }
                await link.publish(
                    topics.device_telemetry(self.name), json.dumps(payload).encode(), qos=1
                )
                self.published += 1
                await asyncio.sleep(self.interval)
        finally:
            self.idle.set()


async def _answer_commands(responder: DeviceResponder, device: SimulatedDevice) -> None:
    """sensor-01 answers commands and publishes on one connection, as a device does (the
    broker gives a device one connection). The responder speaks aiomqtt itself: whatever ends
    its connection, it connects again."""
    while True:
        try:
            await responder.run(also=device.stream)
        except Exception as exc:
            device.reconnects += 1
            device.last_error = str(exc) or type(exc).__name__
        await asyncio.sleep(RECONNECT_S)


async def _send_intent(stack: Stack, out: Output, clock: Clock) -> None:
    """Once the gateway announced its capabilities, send the demo intent and show its stream."""
    await asyncio.sleep(3)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cybernetic",
        "intent",
        "send",
        "temp.sample",
        "--args",
        '{"n": 4, "interval": 0.4}',
        "-c",
        str(stack.cloud_config),
        "--timeout",
        "20",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C goes to the demo, which ends this child itself
    )
    assert proc.stdout is not None
    out.stream(f"{clock.stamp()} intent temp.sample sent to sensor-01's capability")
    try:
        async for line in proc.stdout:
            out.stream(f"           intent | {line.decode(errors='replace').rstrip()}")
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _limit_rate(interval: float) -> float:
    """Half the device's rate (every other reading over it); flat out, 5 a second."""
    return 5.0 if interval == 0 else 1 / (2 * interval)


def _control(stack: Stack, request: Request) -> Answer:
    """One request to the running cloud's control socket, as ``cybernetic fleet`` sends it."""
    answer = send(stack.state / "cloud" / SOCKET_NAME, request)
    if not answer.ok:
        raise RuntimeError(f"the cloud refused it ({answer.error}): {answer.detail}")
    return answer


async def _change_limit(
    stack: Stack, out: Output, clock: Clock, device: str, interval: float
) -> None:
    """Partway through, set a limit on one device from the cloud (the path of `cybernetic
    fleet limit set`: the cloud's control socket, its store, sync down) and show its effect:
    the gateway's acknowledgement ("applied on 1 of 1") and the gateway refusing the
    device's readings over it, from its metrics."""
    await asyncio.sleep(LIMIT_AT_S)
    rate = _limit_rate(interval)
    target = f"gw/{stack.gateway_id}"
    before = _int(await asyncio.to_thread(metrics, stack.gateway_metrics), DEVICE_REFUSED)
    request = LimitSet(target=target, key=f"device/{device}", rate=rate, burst=1)
    try:
        answer = await asyncio.to_thread(_control, stack, request)
    except (OSError, RuntimeError) as exc:
        out.stream(f"{clock.stamp()} limit  not set: {one_line(str(exc)) or exc!r}")
        return
    written = answer.written
    assert written is not None
    out.stream(
        f"{clock.stamp()} limit  set in the cloud: {device} limited to {rate:g}/s (half its"
        f" rate) on {target} (as `cybernetic fleet limit set {target} device/{device}"
        f" --rate {rate:g}`; version {written.version})"
    )
    query = AppliedQuery(namespace=written.namespace, key=written.key, target=written.target)
    deadline = time.monotonic() + LIMIT_EFFECT_S
    summary, refused = "", 0
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        try:
            applied = (await asyncio.to_thread(_control, stack, query)).applied
        except (OSError, RuntimeError):
            continue  # the cloud is busy or restarting: look again
        gw = await asyncio.to_thread(metrics, stack.gateway_metrics)
        summary = applied.summary() if applied is not None else "applied on ?"
        refused = _int(gw, DEVICE_REFUSED) - before
        if applied is not None and applied.done and refused > 0:
            out.stream(
                f"{clock.stamp()} limit  in effect: {summary} ({target}); the gateway refused"
                f" {refused} of {device}'s readings over it so far (its metric"
                ' cybernetic_s2_rate_decisions_total{scope="device",result="refused"})'
            )
            return
    out.stream(
        f"{clock.stamp()} limit  effect not seen within {LIMIT_EFFECT_S:g} s: {summary},"
        f" {refused} readings refused over it"
    )


# -- what is flowing ---------------------------------------------------------------------
@dataclass
class Clock:
    started: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stamp(self, at: float | None = None) -> str:
        return f"[{self.elapsed() if at is None else at:6.1f}s]"


def metrics(port: int, timeout: float = 1.0) -> dict[str, float]:
    """A daemon's samples as :func:`~cybernetic.stack.scrape` sums them ({} when it does not
    answer), and also each sample of two or more labels under its whole label set, sorted:
    ``name{result=refused,scope=device}`` (a sum over one label would mix scopes)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=timeout).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            keys = [sample.name, *(f"{sample.name}:{k}={v}" for k, v in labels.items())]
            if len(labels) > 1:
                keys.append(
                    sample.name + "{" + ",".join(f"{k}={labels[k]}" for k in sorted(labels)) + "}"
                )
            for key in keys:
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _int(m: dict[str, float], key: str) -> int:
    return int(m.get(key, 0))


def _labelled(m: dict[str, float], name: str, label: str) -> dict[str, int]:
    """``{value: count}`` of a counter's ``label`` (non-zero ones), from :func:`scrape`."""
    head = f"{name}:{label}="
    return {k[len(head) :]: int(v) for k, v in m.items() if k.startswith(head) and v}


FLAG_EVENT = "policy.flagged"
"""The event the gateway sends for each reading its ingest policy flagged."""


AUDIT_EVENT = "audit.entry"
"""How the gateway ships an entry of its audit chain: a copy of an action shown already."""


def _kind(event: CloudEvent) -> str:
    """``alert`` (raised by a GoldRush pattern, window or situation), ``flag`` (a reading
    the ingest policy flagged), ``audit`` (an audit chain entry: counted, not shown) or
    ``event`` (anything else)."""
    if event.name == FLAG_EVENT:
        return "flag"
    if event.name == AUDIT_EVENT:
        return "audit"
    if event.name.startswith("rules.") and "rule" in event.attrs:
        return "alert"
    return "event"


def _values(attrs: dict[str, object]) -> str:
    values = attrs.get("values")
    items = values.items() if isinstance(values, dict) else ()
    return ", ".join(f"{k} {v}" for k, v in items)


def _flag_line(event: CloudEvent, more: int, at: str) -> str:
    a = event.attrs
    also = f" (+{more} more)" if more else ""
    return (
        f"{at} flag   {event.source} {_values(a)}: {a.get('reason', '')}"
        f" (policy {a.get('policy', '?')} v{a.get('version', '?')}, rule {a.get('rule', '?')})"
        f"{also}"
    )


def _fact(value: str | float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _describe(event: CloudEvent, at: str) -> str:
    if _kind(event) == "alert":
        kind = event.attrs.get("kind", "rule")
        message = event.attrs.get("message") or _values(event.attrs)
        return (
            f"{at} alert  {event.name} on {event.source} ({event.severity}, {kind}"
            f" {event.attrs['rule']}): {message}"
        )
    facts = ", ".join(
        f"{k} {_fact(v)}"
        for k, v in list(event.attrs.items())[:4]
        if isinstance(v, str | int | float)
    )
    line = f"{at} event  {event.name} from {event.source} ({event.severity})"
    return f"{line}: {facts}" if facts else line


@dataclass
class Flow:
    """The counts of one moment, from both daemons' metrics."""

    published: int
    gw: dict[str, float]
    cloud: dict[str, float]

    @property
    def received(self) -> int:
        return _int(self.gw, "cybernetic_ingest_messages_total")

    @property
    def stored(self) -> int:
        return _int(self.gw, "cybernetic_ingest_stored_readings_total")

    @property
    def cloud_stored(self) -> int:
        return _int(self.cloud, "cybernetic_cloud_stored_readings_total")

    @property
    def flagged(self) -> int:
        return _int(self.gw, "cybernetic_policy_decisions_total:decision=flagged")

    @property
    def outbox_rows(self) -> int:
        return _int(self.gw, "cybernetic_outbox_rows")

    def drained(self) -> bool:
        """Nothing left between the devices and the cloud store."""
        return (
            bool(self.gw)
            and self.received >= self.published
            and self.outbox_rows == 0
            and _int(self.gw, "cybernetic_uplink_batches_in_flight") == 0
        )


class Monitor:
    """Watches the stack: account lines with rates, events and policy flags as they happen,
    and the closing summary."""

    def __init__(self, stack: Stack, devices: list[SimulatedDevice], out: Output) -> None:
        self.stack = stack
        self.devices = devices
        self.out = out
        self.clock = Clock()
        self.seen: collections.Counter[str] = collections.Counter()
        """Events shown, by kind (:func:`_kind`)."""
        self._last_event = 0
        self._last_account: tuple[float, int, int] = (0.0, 0, 0)
        self._next_account = ACCOUNT_EVERY_S

    def published(self) -> int:
        return sum(d.published for d in self.devices)

    async def flow(self) -> Flow:
        gw, cloud = await asyncio.gather(
            asyncio.to_thread(metrics, self.stack.gateway_metrics),
            asyncio.to_thread(metrics, self.stack.cloud_metrics),
        )
        # the devices' count is read after the daemons' counts, so that it is not behind them
        # (a reading taken meanwhile would show the gateway storing more than was published)
        # the bridge's machine readings are published by the gateway itself (docs/bridge.md)
        machines = _int(gw, "cybernetic_bridge_readings_total")
        return Flow(self.published() + machines, gw, cloud)

    def start(self) -> None:
        self.clock = Clock()

    async def poll(self, *, account: bool = False) -> Flow:
        """Show new events and flags; the account line when it is due (or ``account``)."""
        flow = await self.flow()
        await self._show_events()
        now = self.clock.elapsed()
        if account or now >= self._next_account:
            self.out.stream(self._account(flow, now))
            self._next_account = now + ACCOUNT_EVERY_S
        return flow

    async def _show_events(self) -> None:
        """Each new alert and event on a line; flags too, one line per device per poll (a
        warm device has every reading flagged)."""
        while new := await asyncio.to_thread(self.stack.cloud_events, self._last_event):
            self._last_event = new[-1].id
            flags: dict[str, list[CloudEvent]] = {}
            for event in new:
                kind = _kind(event)
                self.seen[kind] += 1
                if kind == "flag":
                    flags.setdefault(event.source, []).append(event)
                elif kind != "audit":
                    self.out.stream(_describe(event, self._at(event)))
            for same in flags.values():
                self.out.stream(_flag_line(same[-1], len(same) - 1, self._at(same[-1])))

    def _at(self, event: CloudEvent) -> str:
        return self.clock.stamp(max(0.0, event.ts_ms / 1000 - self.clock.wall))

    def _account(self, flow: Flow, now: float) -> str:
        then, published, stored = self._last_account
        span = max(now - then, 1e-3)
        self._last_account = (now, flow.published, flow.cloud_stored)
        g, c = flow.gw, flow.cloud
        return (
            f"{self.clock.stamp(now)} devices published {flow.published}"
            f" ({(flow.published - published) / span:.1f}/s)"
            f" | gateway stored {flow.stored}, outbox {flow.outbox_rows} rows"
            f", uplink {'up' if g.get('cybernetic_uplink_connected') else 'down'}"
            f" | cloud stored {flow.cloud_stored}, {(flow.cloud_stored - stored) / span:.1f}/s"
            f", duplicates {_int(c, 'cybernetic_cloud_duplicate_readings_total')}"
            f", events {_int(c, 'cybernetic_cloud_events_total')}"
        )

    async def drain(self, seconds: float) -> Flow:
        """Wait (up to ``seconds``) until the readings still on their way reached the cloud."""
        deadline = time.monotonic() + seconds
        flow = await self.flow()
        while not flow.drained() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            flow = await self.flow()
        return flow

    def summary(self, flow: Flow, ran_s: float, opts: DemoOptions) -> str:
        return _summary(flow, self.seen, ran_s, opts, self.devices)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.1f}/s" if seconds > 0 else "-"


def _reasons(flow: Flow) -> dict[str, int]:
    """Why the gateway refused readings, by reason (counters of the steps that refuse)."""
    g = flow.gw
    reasons = _labelled(g, "cybernetic_ingest_rejected_total", "reason")
    denied = _int(g, "cybernetic_policy_decisions_total:decision=denied")
    if denied:
        reasons["denied by the ingest policy"] = denied
    # readings pass S2's device limits and then its total budget (gateway.s2.admission);
    # the other scopes (user, capability) are intents', not readings
    for key, why in (
        (DEVICE_REFUSED, "over their device's S2 rate limit"),
        (BUDGET_REFUSED, "over the gateway's S2 budget"),
    ):
        if n := _int(g, key):
            reasons[why] = n
    return reasons


def _summary(
    flow: Flow,
    events: collections.Counter[str],
    ran_s: float,
    opts: DemoOptions,
    devices: list[SimulatedDevice],
) -> str:
    """The closing account: published = stored + refused + dropped + in flight."""
    g, c = flow.gw, flow.cloud
    published = flow.published
    redelivered = _int(g, "cybernetic_ingest_redelivered_readings_total")
    refused_gw = max(0, flow.received - flow.stored - redelivered)
    refused_cloud = _int(c, "cybernetic_cloud_refused_readings_total")
    reasons = _reasons(flow)
    other = refused_gw - sum(reasons.values())
    if other > 0:
        reasons["other"] = other
    if refused_cloud:
        reasons["refused by the cloud"] = refused_cloud
    refused = refused_gw + refused_cloud
    dropped_by = _labelled(g, "cybernetic_outbox_dropped_readings_total", "reason")
    dropped = sum(dropped_by.values())
    in_broker = published - flow.received
    in_outbox = flow.stored - flow.cloud_stored - refused_cloud - dropped
    in_flight = in_broker + in_outbox
    stored = flow.cloud_stored
    every = "as fast as acknowledged" if opts.interval == 0 else f"every {opts.interval:g} s"
    each = f"{len(devices)} device{_s(len(devices))} publishing {every}"

    def row(label: str, n: int, rate: str, text: str) -> str:
        return f"  {label:<10}{n:>9} {rate:>9}  {text}"

    def listing(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))

    lines = [
        f"demo stopped after {ran_s:.1f} s of {each}:",
        row("published", published, _rate(published, ran_s), "sent by the devices"),
        row("stored", stored, _rate(stored, ran_s), "in the cloud's store, each once"),
        row("refused", refused, "", listing(reasons) or "none"),
        row("dropped", dropped, "", f"by the outbox's bounds {listing(dropped_by)}".rstrip()),
        row(
            "in flight",
            in_flight,
            "",
            f"{in_broker} in the edge broker, {in_outbox} in the gateway's outbox or on the"
            f" way (after waiting up to {DRAIN_S:g} s for them)",
        ),
    ]
    silent = [name for name, m in (("gateway", g), ("cloud", c)) if not m]
    if silent:
        who = " and the ".join(silent)
        unknown = f"  the {who} did not answer at the end (its metrics): the rest of the account"
        lines[3 if c else 2 :] = [f"{unknown} is unknown; see the log in the state folder"]
    elif in_broker < 0 or in_outbox < 0:
        lines.append(
            f"  the counts do not add up ({published} published): a daemon restarted, or the"
            " state folder held readings of an earlier run"
        )
    else:
        lines.append(
            f"  {published} published = {stored} stored + {refused} refused + {dropped} dropped"
            f" + {in_flight} in flight"
        )
    duplicates = _int(c, "cybernetic_cloud_duplicate_readings_total")
    alerts, flags = events["alert"], events["flag"]
    lines += [
        row("duplicates", duplicates, "", "dropped by the cloud: batches sent again, stored once"),
        row("flagged", flow.flagged, "", "by the ingest policy: stored and forwarded, marked"),
        row(
            "events",
            events.total(),
            "",
            f"{alerts} pattern alert{_s(alerts)}, {flags} policy flag{_s(flags)},"
            f" {events['event']} other, {events['audit']} audit entr"
            f"{'y' if events['audit'] == 1 else 'ies'}",
        ),
        f"  {EVENTS_LINE}",
    ]
    lost = [d for d in devices if d.reconnects]
    if lost:
        lines.append(
            "  reconnected: "
            + ", ".join(f"{d.name} {d.reconnects}x ({d.last_error})" for d in lost)
        )
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------
async def _wait_ready(stack: Stack, kind: str, metric: str, port: int, stopper: Stopper) -> None:
    """Wait until ``kind`` (gateway or cloud) is subscribed, or a stop is asked for."""
    deadline = time.monotonic() + START_TIMEOUT_S
    log = stack.state / f"{kind}.log"
    while not stopper.stopping():
        proc = stack.gateway_proc if kind == "gateway" else stack.cloud_proc
        if proc is not None and proc.poll() is not None:
            raise DemoError(f"the {kind} exited ({proc.returncode}) while starting; see {log}")
        if (await asyncio.to_thread(scrape, port, 0.5)).get(metric) == 1:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"the {kind} was not ready within {START_TIMEOUT_S:g} s; see {log}")
        await stopper.wait(0.1)


async def _start(stack: Stack, stopper: Stopper) -> None:
    """Start the stack step by step, so a stop request between steps is heard."""
    stack.start_brokers()  # includes the gateway's enrolment
    if stopper.stopping():
        return
    stack.start_cloud()
    await _wait_ready(
        stack, "cloud", "cybernetic_cloud_ingest_connected", stack.cloud_metrics, stopper
    )
    if stopper.stopping():
        return
    stack.start_gateway()
    # devices start only once the gateway is subscribed: before its first subscription the
    # broker has no session for it and a reading would be dropped
    await _wait_ready(
        stack, "gateway", "cybernetic_ingest_connected", stack.gateway_metrics, stopper
    )


def _devices(stack: Stack, opts: DemoOptions) -> list[SimulatedDevice]:
    devices = []
    for i in range(1, opts.devices + 1):
        name = f"sensor-{i:02d}"
        link = BrokerLink(
            host=stack.edge.host,
            port=stack.device_port,
            username=name,
            password=stack.add_device(name),
        )
        devices.append(SimulatedDevice(name, opts.interval, link))
    return devices


def _header(stack: Stack, out: Output) -> None:
    edge, cloud = stack.device_port, stack.cloud_broker.tls_port or stack.cloud_broker.port
    out.stream(f"Cybernetic Edge demo: state in {stack.state}")
    out.stream(
        f"  edge broker 127.0.0.1:{edge}, cloud broker 127.0.0.1:{cloud}"
        " (mutual TLS; the gateway enrolled with a one-time token)"
    )
    out.stream(
        f"  metrics: gateway http://127.0.0.1:{stack.gateway_metrics}/metrics,"
        f" cloud http://127.0.0.1:{stack.cloud_metrics}/metrics"
    )
    out.stream(f"  {EVENTS_LINE}")
    out.stream(
        f"  why did that happen? (while it runs) cybernetic trace --recent alert"
        f" -c {stack.cloud_config}; then cybernetic trace ID -c ...; cybernetic audit verify"
        " -c ..."
    )
    out.stream("  Ctrl-C stops cleanly with a summary; a second Ctrl-C stops at once")


async def _run(stack: Stack, opts: DemoOptions, stopper: Stopper, out: Output) -> None:
    """Start, run the devices until the duration or a stop, drain, print the summary."""
    devices = _devices(stack, opts)
    await _start(stack, stopper)
    if stopper.stopping():
        out.summary("demo stopped while starting")
        return
    _header(stack, out)
    monitor = Monitor(stack, devices, out)
    first = devices[0]
    responder = DeviceResponder(
        first.name,
        temperature_handlers(),
        host=first.broker.host,
        port=first.broker.port,
        password=first.broker.password,
    )
    monitor.start()
    deadline = None if opts.duration is None else time.monotonic() + opts.duration
    tasks = [asyncio.create_task(d.run()) for d in devices[1:]]
    tasks.append(asyncio.create_task(_answer_commands(responder, first)))
    tasks.append(asyncio.create_task(_send_intent(stack, out, monitor.clock)))
    limited = devices[-1]
    tasks.append(
        asyncio.create_task(_change_limit(stack, out, monitor.clock, limited.name, opts.interval))
    )
    try:
        while not stopper.stopping():
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            await stopper.wait(left)
            if deadline is not None and time.monotonic() >= deadline:
                break
            await monitor.poll()
    finally:
        stopper.begin()
        ran = monitor.clock.elapsed()
        await _stop_devices(devices, tasks)
    await monitor.drain(DRAIN_S)
    flow = await monitor.poll(account=True)
    out.summary(monitor.summary(flow, ran, opts))


async def _stop_devices(devices: list[SimulatedDevice], tasks: list[asyncio.Task[None]]) -> None:
    """Stop publishing, each device after its reading on the way (so every published reading
    is counted), then end their tasks. A stream goes on only while its device is not stopped:
    a cancellation swallowed by a library (aiomqtt's ``wait_for`` on Python 3.11) cannot keep
    it publishing."""
    for d in devices:
        d.stop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            for d in devices:
                await d.idle.wait()
    await asyncio.gather(*(stop_task(t, 1.0) for t in tasks))


async def run_demo(opts: DemoOptions) -> int:
    """Run the demo: 0 after a clean stop. Raises :class:`DemoError` (after stopping
    everything) for invalid options and failures; a forced stop exits the process."""
    problem = opts.problem()
    if problem is not None:
        raise DemoError(problem, USAGE)
    out = Output(quiet=opts.quiet)
    temporary = opts.state_dir is None
    state = opts.state_dir or Path(tempfile.mkdtemp(prefix="cybernetic-demo-"))
    reaper = Reaper(state if temporary else None)
    stopper = Stopper(reaper, out)
    stopper.install()
    stack: Stack | None = None
    failure: DemoError | None = None
    try:
        from firmware_bridge.simulated import demo_devices, demo_machines  # noqa: PLC0415

        ports = (free_port(), free_port())
        overrides = _gateway_overrides(demo_devices(*ports))
        stack = Stack(state, gateway_id="demo-gw", gateway=overrides, tls=True)
        async with demo_machines(*ports):
            await _run(stack, opts, stopper, out)
    except Exception as exc:  # every failure is one line, never a traceback
        kept = f" (its state is kept in {state})" if temporary else ""
        failure = DemoError(f"the demo could not run: {one_line(str(exc)) or exc!r}{kept}")
    finally:
        stopper.begin()
        if stack is not None:
            try:
                await asyncio.to_thread(stack.close)
            except Exception as exc:  # the reaper below kills what did not stop
                failure = failure or DemoError(f"while stopping the demo: {one_line(str(exc))}")
        keep = temporary and failure is not None  # a failed run's logs stay for reading
        if temporary and not keep:
            shutil.rmtree(state, ignore_errors=True)
        reaper.close(keep=keep)
        stopper.restore()
    if failure is not None:
        raise failure
    return OK
