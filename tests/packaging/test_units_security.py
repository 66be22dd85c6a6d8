"""The units' hardening, scored by systemd itself (`systemd-analyze security --offline=true`).

The issue's bar is an exposure of 2.0 or below for the gateway; docs/install.md quotes the
figure. The cloud unit is held to the same bar. Scoring is offline: no running systemd needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deb_support import REPO, run

UNITS = REPO / "systemd"
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")


def exposure(unit: Path) -> tuple[float, str]:
    proc = run("systemd-analyze", "security", "--offline=true", "--no-pager", unit, check=False)
    match = EXPOSURE.search(proc.stdout)
    assert match, f"no exposure figure in:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1)), proc.stdout


@pytest.mark.parametrize("name", ["cybernetic-gateway.service", "cybernetic-cloud.service"])
def test_exposure_at_most_2(systemd_analyze: None, name: str) -> None:
    score, report = exposure(UNITS / name)
    assert score <= 2.0, f"{name} exposure {score} > 2.0:\n{report}"


def test_the_threshold_catches_a_weakened_unit(systemd_analyze: None, tmp_path: Path) -> None:
    """The score moves when hardening goes, so the test above can fail."""
    text = (UNITS / "cybernetic-gateway.service").read_text()
    weak = "\n".join(
        line
        for line in text.splitlines()
        if not line.startswith(
            (
                "ProtectSystem=",
                "PrivateUsers=",
                "CapabilityBoundingSet=",
                "SystemCallFilter=",
                "PrivateDevices=",
                "RestrictNamespaces=",
            )
        )
    )
    (tmp_path / "cybernetic-gateway.service").write_text(weak)
    score, _ = exposure(tmp_path / "cybernetic-gateway.service")
    assert score > 2.0


@pytest.mark.parametrize("name", ["cybernetic-gateway.service", "cybernetic-cloud.service"])
def test_no_memory_deny_write_execute(name: str) -> None:
    """wasmtime compiles agents to machine code at run time: W^X would kill the daemon."""
    directives = [
        line.split("=", 1)[0]
        for line in (UNITS / name).read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert "MemoryDenyWriteExecute" not in directives
