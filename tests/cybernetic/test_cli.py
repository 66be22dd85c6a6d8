"""The command line's contracts: --version, config check, demo leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from amcp import __version__

CLI = [sys.executable, "-m", "cybernetic"]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{entry.name}: {cmd}")
    return found


def test_version() -> None:
    out = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"cybernetic {__version__}"


def test_config_check_names_each_bad_field_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "gw.toml"
    bad.write_text(
        '[gateway]\nid = "gw 1"\nbogus = 1\n[uplink.broker]\nport = "x"\npassword = "hunter2"\n'
    )
    out = subprocess.run(
        [*CLI, "config", "check", str(bad)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()  # errors go to stderr, one per bad field
    assert len(lines) == 3
    assert "$.gateway: unknown field 'bogus'" in lines[0]
    assert "$.gateway.id: Expected `str` matching regex" in lines[1]
    assert "$.uplink.broker.port: Expected `int`, got `str`" in lines[2]
    assert "hunter2" not in out.stdout + out.stderr


def test_config_check_accepts_a_valid_file(tmp_path: Path) -> None:
    good = tmp_path / "cloud.toml"
    good.write_text('[cloud]\nid = "c"\n[broker]\nport = 1884\n')
    out = subprocess.run(
        [*CLI, "config", "check", str(good)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout
    assert "valid cloud configuration" in out.stdout


def test_demo_runs_for_its_duration_and_leaves_no_process(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    t0 = time.monotonic()
    out = subprocess.run(
        [*CLI, "demo", "--duration", "5", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - t0 >= 5
    assert "demo stopped" in out.stdout
    # the account shows readings reaching the cloud
    last = [line for line in out.stdout.splitlines() if "cloud stored" in line][-1]
    assert int(last.split("cloud stored ")[1].split(",")[0]) > 0
    assert _processes_mentioning(str(state)) == []


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group, not just the demo."""
    state = tmp_path / "demo"
    with subprocess.Popen(
        [*CLI, "demo", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a shell job would have
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        for line in proc.stdout:  # wait for the first account: everything is up
            if "cloud stored" in line:
                break
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0
        errors = proc.stderr.read()
    assert "Traceback" not in errors, errors
    assert "exception" not in errors.lower(), errors
    assert _processes_mentioning(str(state)) == []


def test_each_command_module_registers_the_command_of_its_name() -> None:
    from cybernetic.__main__ import build_parser, command_names  # noqa: PLC0415

    for name in command_names():
        parser = build_parser(only=name)
        actions = [a for a in parser._actions if a.dest == "command"]
        assert list(actions[0].choices) == [name]  # type: ignore[arg-type]


def test_the_gateway_daemon_loads_neither_cloud_nor_benchmarks_nor_wasmtime() -> None:
    code = (
        "import sys\nfrom cybernetic.__main__ import main\n"
        "try:\n    main(['gateway', 'run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "gateway.app" in loaded
    assert not {"cloud", "cybernetic.bench", "cybernetic.stack", "wasmtime", "rich"} & loaded
