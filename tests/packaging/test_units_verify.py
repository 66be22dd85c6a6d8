"""`systemd-analyze verify` is clean for both units and the broker drop-in.

verify loads a unit the way systemd would, checks every directive and that ExecStart= and
ExecReload= name executables. It runs against a scratch root holding this machine's systemd
units, the repository's units and a stand-in for /opt/cybernetic-edge/bin/cybernetic, so it
needs no installed package (test_deb_package.py verifies the installed units as well).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from deb_support import REPO, run

UNITS = ("cybernetic-gateway.service", "cybernetic-cloud.service")


@pytest.fixture
def root(systemd_analyze: None, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    system = root / "usr/lib/systemd/system"
    shutil.copytree("/usr/lib/systemd/system", system, symlinks=True)
    for unit in UNITS:
        shutil.copy(REPO / "systemd" / unit, system / unit)
    (system / "mosquitto.service.d").mkdir(exist_ok=True)
    shutil.copy(
        REPO / "systemd/mosquitto.service.d/cybernetic.conf", system / "mosquitto.service.d"
    )
    (root / "lib").symlink_to("usr/lib")
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    for tool in ("/usr/bin/kill", "/usr/bin/mkdir", "/usr/bin/chown", "/usr/sbin/mosquitto"):
        shutil.copy(tool, root / tool.lstrip("/"))
    stand_in = root / "opt/cybernetic-edge/bin/cybernetic"
    stand_in.parent.mkdir(parents=True)
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    return root


def verify(root: Path, unit: str) -> str:
    proc = run(
        "systemd-analyze", "verify", f"--root={root}", f"/lib/systemd/system/{unit}", check=False
    )
    return (proc.stdout + proc.stderr).strip() + (
        "" if proc.returncode == 0 else f" (exit {proc.returncode})"
    )


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_clean(root: Path, unit: str) -> None:
    assert verify(root, unit) == ""


def test_mosquitto_drop_in_verifies_clean(root: Path) -> None:
    assert Path("/usr/lib/systemd/system/mosquitto.service").exists(), "mosquitto not installed"
    assert verify(root, "mosquitto.service") == ""


def test_verify_reports_a_bad_directive(root: Path) -> None:
    """A unit with a typo is not clean, so the tests above can fail."""
    unit = root / "usr/lib/systemd/system/cybernetic-gateway.service"
    unit.write_text(
        unit.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomme=yes")
    )
    assert "Unknown key" in verify(root, "cybernetic-gateway.service")


def test_verify_reports_a_missing_executable(root: Path) -> None:
    (root / "opt/cybernetic-edge/bin/cybernetic").unlink()
    assert "is not executable" in verify(root, "cybernetic-gateway.service")


def test_serial_devices_example_drop_in_verifies_clean(root: Path) -> None:
    """The documented drop-in for serial field devices loads on top of the shipped unit."""
    dropins = root / "etc/systemd/system/cybernetic-gateway.service.d"
    dropins.mkdir(parents=True)
    shutil.copy(REPO / "systemd/examples/serial-devices.conf", dropins)
    assert verify(root, "cybernetic-gateway.service") == ""
    merged = run(
        "systemd-analyze",
        "cat-config",
        f"--root={root}",
        "systemd/system/cybernetic-gateway.service.d/serial-devices.conf",
        check=False,
    )
    assert "DeviceAllow=/dev/ttyUSB0 rw" in merged.stdout, merged.stdout + merged.stderr
