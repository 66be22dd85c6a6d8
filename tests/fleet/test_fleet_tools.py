"""The fleet playbooks pass ansible-lint's production profile, and the dynamic inventory
script answers a cloud that does not answer with one line (the fleet test runs it against a
real cloud)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.needs import needs

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
VENV_BIN = Path(sys.executable).parent


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    lint = VENV_BIN / "ansible-lint"
    needs(lint.exists(), "ansible-lint in this venv (pip install -e '.[dev]')")
    home = tmp_path / "home"  # ansible-lint's and ansible's caches, not the user's
    home.mkdir()
    proc = subprocess.run(
        [lint, "--profile", "production", "--nocolor"],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home), "NO_COLOR": "1"},
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout


def test_dynamic_inventory_names_a_cloud_that_does_not_answer() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, ANSIBLE / "fleet_inventory.py", "--list"],
        env={"CYBERNETIC_CLOUD_STATUS_URL": f"http://127.0.0.1:{port}/status"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"fleet_inventory: no answer from the cloud at http://127.0.0.1:{port}"
    )
