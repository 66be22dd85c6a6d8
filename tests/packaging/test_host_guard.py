"""The guard that fails the run when the packaging tests change this machine (conftest.py).

host_snapshot() is checked here on a scratch root holding what an installation of the package
leaves behind, so the guard is known to see each kind of change: the package in dpkg's
database, the account and group, files in /etc/cybernetic, a Mosquitto conf.d file, the
units' enablement links, the program in /opt. Needs no root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from deb_support import host_snapshot, snapshot_changes

STATUS = """\
Package: cybernetic-edge
Status: install ok installed
Priority: optional
Section: net
Maintainer: Cybernetic Edge maintainers <maintainers@cybernetic-edge.invalid>
Architecture: amd64
Version: 0.1.0
Description: edge-first IoT gateway daemon with cloud sync

"""


def scratch_root(root: Path) -> Path:
    for folder in ("etc/mosquitto/conf.d", "etc/systemd/system", "var/lib/dpkg/updates"):
        (root / folder).mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/mosquitto/mosquitto.conf").write_text("include_dir /etc/mosquitto/conf.d\n")
    (root / "var/lib/dpkg/status").write_text("")
    return root


def test_an_untouched_root_has_no_changes(tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root")
    assert snapshot_changes(host_snapshot(root), host_snapshot(root)) == []


def test_the_guard_sees_what_an_installation_leaves(tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root")
    before = host_snapshot(root)

    if shutil.which("dpkg-query"):
        (root / "var/lib/dpkg/status").write_text(STATUS)
    with (root / "etc/passwd").open("a") as fh:
        fh.write("cybernetic:x:999:999:Cybernetic Edge:/var/lib/cybernetic:/usr/sbin/nologin\n")
    with (root / "etc/group").open("a") as fh:
        fh.write("cybernetic:x:999:\n")
    (root / "etc/cybernetic").mkdir()
    (root / "etc/cybernetic/gateway.toml").write_text("[gateway]\n")
    (root / "etc/mosquitto/conf.d/cybernetic.conf").write_text("listener 1883\n")
    (root / "etc/mosquitto/mosquitto.conf").write_text("edited\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "cybernetic-gateway.service").symlink_to("/lib/systemd/system/x.service")
    (root / "opt/cybernetic-edge/bin").mkdir(parents=True)

    changes = "\n".join(snapshot_changes(before, host_snapshot(root)))

    expected = [
        "added   /etc/passwd cybernetic",
        "added   /etc/group cybernetic",
        "added   /etc/cybernetic/gateway.toml",
        "added   /etc/mosquitto/conf.d/cybernetic.conf",
        "changed /etc/mosquitto/mosquitto.conf",
        "added   /etc/systemd/system/multi-user.target.wants/cybernetic-gateway.service",
        "added   /opt/cybernetic-edge/bin",
    ]
    if shutil.which("dpkg-query"):
        expected.append("added   package cybernetic-edge: ii  0.1.0")
    for line in expected:
        assert line in changes, f"{line!r} not in:\n{changes}"


def test_the_guard_sees_a_removed_file(tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root")
    before = host_snapshot(root)
    (root / "etc/mosquitto/mosquitto.conf").unlink()
    assert snapshot_changes(before, host_snapshot(root)) == [
        f"removed /etc/mosquitto/mosquitto.conf (was: {before['/etc/mosquitto/mosquitto.conf']})"
    ]


@pytest.mark.parametrize("name", ["cybernetic-gateway.service", "cybernetic-cloud.service.d"])
def test_only_the_packages_units_are_watched(tmp_path: Path, name: str) -> None:
    root = scratch_root(tmp_path / "root")
    before = host_snapshot(root)
    (root / "etc/systemd/system/other.service").write_text("[Unit]\n")
    assert snapshot_changes(before, host_snapshot(root)) == []
    (root / "etc/systemd/system" / name).write_text("[Unit]\n")
    assert snapshot_changes(before, host_snapshot(root)) != []
