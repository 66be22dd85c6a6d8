"""`cybernetic demo` as a user runs it: a real subprocess with real brokers and daemons.

Stopping: SIGTERM and SIGINT end it cleanly with a summary, a second signal at once, and
neither a clean stop nor a SIGKILL of the demo leaves a process behind (checked by pid, each
pid with its start time, so a reused pid is not mistaken for a survivor). Options: invalid
ones are one line and exit 2. Output: ``--quiet`` prints the summary alone, and the summary
accounts for every published reading.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "cybernetic", "demo"]
SMALL = ["--devices", "2", "--interval", "0.2"]
STOP_BOUND_S = 30.0
"""A clean stop: devices, drain (5 s at most), summary, daemons and brokers."""


# -- processes, by pid and start time --------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, ppid, start time) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), fields[19]


def _descendants(root: int) -> dict[int, str]:
    """Every live process under ``root``: pid -> start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[0] in "ZX":
            continue
        children.setdefault(stat[1], []).append(int(entry.name))
        starts[int(entry.name)] = stat[2]
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = starts[pid]
        todo.extend(children.get(pid, []))
    return found


def _alive(pids: dict[int, str]) -> dict[int, str]:
    """Those of ``pids`` still running (same pid, same start time, not a zombie)."""
    out = {}
    for pid, start in pids.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == start and stat[0] not in "ZX":
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _wait_gone(pids: dict[int, str], timeout: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (left := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


class Demo:
    """A running demo: its process, its output so far, its children."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []

    def read_until(self, needle: str, timeout: float = 60.0) -> str:
        """Read stdout up to a line holding ``needle``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.lines.append(line)
            if needle in line:
                return line
            assert time.monotonic() < deadline, f"no {needle!r} in {timeout} s: {self.lines}"
        raise AssertionError(f"demo ended before {needle!r}: {self.lines}{self.stderr()}")

    def running_children(self) -> dict[int, str]:
        """Its process tree once everything is up: brokers, daemons, the guardian."""
        found = _descendants(self.proc.pid)
        assert len(found) >= 5, found  # two brokers, cloud, gateway, guardian
        return found

    def finish(self, timeout: float) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + out, err

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in started:
        demo.kill()


def _counts(summary: str) -> tuple[int, int, int, int, int]:
    match = re.search(
        r"(\d+) published = (\d+) stored \+ (\d+) refused \+ (\d+) dropped \+ (-?\d+) in flight",
        summary,
    )
    assert match, summary
    published, stored, refused, dropped, in_flight = (int(g) for g in match.groups())
    return published, stored, refused, dropped, in_flight


# -- stopping ------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_demo_cleanly_with_its_summary_and_no_process_left(
    tmp_path: Path, demos: list[Demo], sig: signal.Signals
) -> None:
    demo = Demo([*SMALL, "--state-dir", str(tmp_path / "state")])
    demos.append(demo)
    demo.read_until("devices published")
    children = demo.running_children()
    t0 = time.monotonic()
    demo.proc.send_signal(sig)  # the demo alone: its children must be stopped by the demo
    code, out, err = demo.finish(STOP_BOUND_S)
    assert time.monotonic() - t0 < STOP_BOUND_S
    assert code == 0, out + err
    assert "stopping cleanly" in out
    assert "demo stopped after" in out
    published, stored, *_ = _counts(out)
    assert published > 0
    assert stored > 0
    assert "Traceback" not in err, err
    assert _wait_gone(children, 5.0) == {}


def test_a_second_signal_ends_everything_at_once(tmp_path: Path, demos: list[Demo]) -> None:
    """A stuck gateway (stopped with SIGSTOP) holds up the clean stop: the second SIGTERM
    does not wait for it."""
    demo = Demo([*SMALL, "--state-dir", str(tmp_path / "state")])
    demos.append(demo)
    demo.read_until("devices published")
    children = demo.running_children()
    gateway = [pid for pid, _ in children.items() if b"gateway\0run" in _cmdline(pid)]
    assert len(gateway) == 1, children
    os.kill(gateway[0], signal.SIGSTOP)
    demo.proc.send_signal(signal.SIGTERM)
    demo.read_until("stopping cleanly", 10.0)
    t0 = time.monotonic()
    demo.proc.send_signal(signal.SIGTERM)
    code, _, err = demo.finish(10.0)
    assert time.monotonic() - t0 < 5.0
    assert code == 128 + signal.SIGTERM
    assert "killing every process of the demo" in err
    assert "Traceback" not in err, err
    assert _wait_gone(children, 5.0) == {}


def test_a_signal_during_start_up_stops_the_demo_and_what_it_started(
    tmp_path: Path, demos: list[Demo]
) -> None:
    """The brokers are up, the daemons starting (a blocking step): the stop is still heard."""
    demo = Demo([*SMALL, "--state-dir", str(tmp_path / "state")])
    demos.append(demo)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 30
    while not any(b"mosquitto" in _cmdline(pid) for pid in seen):
        assert time.monotonic() < deadline, "no broker started"
        seen |= _descendants(demo.proc.pid)
        time.sleep(0.02)
    demo.proc.send_signal(signal.SIGTERM)
    code, out, err = demo.finish(STOP_BOUND_S)
    assert code == 0, out + err
    assert "demo stopped while starting" in out
    assert "Traceback" not in err, err
    assert _wait_gone(seen, 5.0) == {}


def test_sigkill_of_the_demo_leaves_no_process_and_no_temporary_state(
    tmp_path: Path, demos: list[Demo]
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    demo = Demo(SMALL, env={**os.environ, "TMPDIR": str(tmp)})  # its temporary state folder
    demos.append(demo)
    header = demo.read_until("state in")
    state = Path(header.split("state in ", 1)[1].strip())
    assert state.parent == tmp
    demo.read_until("devices published")
    children = demo.running_children()
    demo.proc.kill()
    demo.proc.wait()
    assert _wait_gone(children, 10.0) == {}
    deadline = time.monotonic() + 5.0
    while state.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not state.exists()


def test_the_duration_ends_the_demo_even_publishing_flat_out(tmp_path: Path) -> None:
    """The reported hang: ``--duration 3 --interval 0`` went on publishing for minutes."""
    t0 = time.monotonic()
    with subprocess.Popen(
        [*CLI, "--duration", "3", "--interval", "0", "--devices", "3", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    ) as proc:
        out, err = proc.communicate(timeout=60 + STOP_BOUND_S)
        children_left = _descendants(proc.pid)
    assert proc.returncode == 0, out + err
    assert time.monotonic() - t0 < 60 + STOP_BOUND_S
    published, stored, refused, dropped, in_flight = _counts(out)
    assert published > 100  # flat out, not every 0.5 s
    assert published == stored + refused + dropped + in_flight
    assert children_left == {}
    assert list(tmp_path.iterdir()) == []  # the temporary state is gone


# -- options -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--devices", "0"], "--devices must be between 1 and"),
        (["--devices", "1000"], "--devices must be between 1 and"),
        (["--duration", "-5"], "--duration must be a positive number of seconds"),
        (["--duration", "0"], "--duration must be a positive number of seconds"),
        (["--duration", "nan"], "--duration must be a positive number of seconds"),
        (["--interval", "-1"], "--interval must be between 0 and"),
        (["--state-dir", "FILE"], "is a file, not a folder"),
        (["--state-dir", "FILE/sub"], "which is a file, not a folder"),
    ],
)
def test_invalid_options_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], says: str
) -> None:
    (tmp_path / "FILE").write_text("not a folder")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    out = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")  # the CLI's one-line form (cybernetic.cli)
    assert says in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # nothing was started


# -- output --------------------------------------------------------------------------------
def test_quiet_prints_only_the_summary_and_it_accounts_for_every_reading(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        [*CLI, *SMALL, "--duration", "4", "--quiet", "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("demo stopped after ")
    assert not [line for line in lines if "intent |" in line or "devices published" in line]
    assert not [line for line in lines if not line.startswith(("demo stopped", "  "))]
    published, stored, refused, dropped, in_flight = _counts(out.stdout)
    assert published > 0
    # a healthy run loses nothing: once drained, everything published is in the cloud
    assert (published, refused, dropped, in_flight) == (stored, 0, 0, 0)
    assert re.search(r"published\s+\d+\s+[\d.]+/s", out.stdout)  # with its rate
    assert re.search(
        r"events\s+\d+\s+\d+ pattern alerts?, \d+ policy flags?, \d+ other,"
        r" \d+ audit entr(y|ies)\n",
        out.stdout,
    )
    assert "  events: what the gateway itself reports to the cloud" in out.stdout
    assert "Traceback" not in out.stderr, out.stderr


def test_the_stream_shows_rates_alerts_and_events_as_they_happen(tmp_path: Path) -> None:
    """At ten readings a second per device about one in six is humid (above 55 %), so the
    demo's window pattern (three humid readings within 10 s) fires within a second or two;
    each alert is shown with its device as it reaches the cloud."""
    state = str(tmp_path / "s")
    out = subprocess.run(
        [*CLI, "--devices", "2", "--interval", "0.1", "--duration", "5", "--state-dir", state],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert re.search(r"devices published \d+ \([\d.]+/s\)", text)
    assert re.search(r"cloud stored \d+, [\d.]+/s", text)
    assert "event  rules.swapped from rules" in text  # the gateway loaded its patterns
    alerts = [line for line in text.splitlines() if " alert  " in line]
    humid = [line for line in alerts if " alert  rules.humidity.high on sensor-0" in line]
    assert humid, text
    assert "(warning, window humid-3-in-10s): humidity above 55 % three times" in humid[0]
    summary = text[text.index("demo stopped after") :]
    assert f" {len(alerts)} pattern alert" in summary
    # flags: one line per device and poll, "(+N more)" for the others of that poll; every
    # flagged reading (the gateway's count) reached the cloud as a policy.flagged event
    flags = [line for line in text.splitlines() if " flag   sensor-0" in line]
    shown = sum(
        1 + int(m.group(1)) if (m := re.search(r"\(\+(\d+) more\)", f)) else 1 for f in flags
    )
    assert re.search(rf"flagged\s+{shown} ", summary), summary
    assert f", {shown} policy flag" in summary
    for line in flags:
        assert re.search(r"flag   sensor-0\d temp [\d.]+, humidity [\d.]+: warmer than", line)
        assert "(policy demo v1, rule warm)" in line


def test_a_limit_set_from_the_cloud_takes_effect_and_is_accounted_for(tmp_path: Path) -> None:
    """Partway through, the demo sets a limit on its last device from the cloud (half that
    device's rate, through the cloud's control socket as `cybernetic fleet limit set` does):
    one line says so, a later one shows the gateway's acknowledgement and its refusals, and
    the summary counts those readings as refused, with their reason."""
    state = str(tmp_path / "s")
    out = subprocess.run(
        [*CLI, *SMALL, "--duration", "11", "--state-dir", state],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    lines = text.splitlines()
    set_lines = [line for line in lines if " limit  set in the cloud: " in line]
    assert len(set_lines) == 1, text
    assert "sensor-02 limited to 2.5/s (half its rate) on gw/demo-gw" in set_lines[0]
    assert "cybernetic fleet limit set gw/demo-gw device/sensor-02 --rate 2.5" in set_lines[0]
    effect = [line for line in lines if " limit  in effect: " in line]
    assert len(effect) == 1, text
    assert lines.index(effect[0]) > lines.index(set_lines[0])
    assert "applied on 1 of 1 (gw/demo-gw)" in effect[0]
    shown = re.search(r"the gateway refused (\d+) of sensor-02's readings over it", effect[0])
    assert shown, effect[0]
    assert int(shown.group(1)) >= 1
    # the summary: every published reading accounted for, the refused ones by their reason
    summary = text[text.index("demo stopped after") :]
    published, stored, refused, dropped, in_flight = _counts(summary)
    assert published == stored + refused + dropped + in_flight
    assert refused >= int(shown.group(1))
    assert (dropped, in_flight) == (0, 0)
    assert re.search(
        rf"refused\s+{refused}\s+over their device's S2 rate limit {refused}\n", summary
    )
    assert "other" not in summary.split("refused", 1)[1].split("\n", 1)[0]
    assert "Traceback" not in out.stderr, out.stderr
