"""Fixtures for the fleet tests: a cloud host and three gateways, booted Debian containers on
one private network, and Ansible (from this venv) driving the playbooks in ansible/ over SSH.

The hosts are the packaging tests' containers (tests/packaging/deb_support.py) on the same
cached rootfs, with the cached device layer of fleet_support.py on top; the package is one
build of this tree (build.sh, its venv cached) and two repacks of it. Nothing here changes
this machine: every host is an overlay deleted after use, the network is network namespaces
made and deleted by the fixture, and Ansible's own files go to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

# deb_support and fleet_support are imported by name: the tests folders are not packages
sys.path.append(str(Path(__file__).resolve().parents[1] / "packaging"))

from deb_support import (
    CACHE,
    Container,
    build_rootfs,
    file_lock,
    host_suite,
    is_root,
    project_version,
    rootfs_recipe,
)
from fleet_support import (
    GATEWAYS,
    VENV_BIN,
    Fleet,
    FleetHost,
    FleetNetwork,
    FleetPackages,
    build_device_layer,
    fleet_packages,
    lowerdir,
)

from tests.needs import needs, needs_root

# tool -> the Debian package that provides it
FLEET_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "dpkg-deb": "dpkg",
}


@pytest.fixture(scope="session")
def fleet_tools() -> None:
    """Root, the tools above (installed with apt when missing) and Ansible in this venv."""
    needs_root("booting Debian hosts with systemd-nspawn on private network namespaces")
    with file_lock("apt"):
        missing = sorted({pkg for tool, pkg in FLEET_TOOLS.items() if shutil.which(tool) is None})
        if missing:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                env=env,
                check=False,
                capture_output=True,
            )
    absent = [tool for tool in FLEET_TOOLS if shutil.which(tool) is None]
    needs(not absent, f"the fleet tests need {', '.join(absent)}")
    needs(
        (VENV_BIN / "ansible-playbook").exists(),
        "ansible-core in this venv (pip install -e '.[dev]')",
    )


@pytest.fixture(scope="session")
def fleet_rootfs(fleet_tools: None) -> Path:
    """The packaging tests' cached rootfs (built once with debootstrap, shared)."""
    target = CACHE / f"rootfs-{host_suite()}"
    with file_lock("rootfs"):
        done = target / ".cybernetic-rootfs"
        if not (done.is_file() and done.read_text() == rootfs_recipe()):
            build_rootfs(target)
    return target


@pytest.fixture(scope="session")
def packages(fleet_tools: None) -> FleetPackages:
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    return fleet_packages(project_version(), run_id)


@pytest.fixture(scope="module")
def fleet(fleet_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A cloud host and three gateways, booted and reachable over SSH from the hub namespace."""
    assert is_root()
    layer = build_device_layer(fleet_rootfs)
    folder = tmp_path_factory.mktemp("fleet")
    key = folder / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f", str(key)],
        check=True,
    )
    names = ["cloud-1", *GATEWAYS]
    with ExitStack() as stack:
        network = stack.enter_context(FleetNetwork())
        boxes = [Container(lowerdir(layer, fleet_rootfs), folder / name) for name in names]
        # boot them side by side; each one that booted is shut down by the stack
        with ThreadPoolExecutor(len(boxes)) as pool:
            futures = [pool.submit(box.__enter__) for box in boxes]
        for box, future in zip(boxes, futures, strict=True):
            if future.exception() is None:
                stack.push(box.__exit__)
        for future in futures:
            future.result()
        hosts = []
        for name, box in zip(names, boxes, strict=True):
            address = network.attach(box)
            box.sh("hostnamectl", "set-hostname", name, check=False)
            keys = box.path("/root/.ssh/authorized_keys")
            keys.parent.mkdir(mode=0o700, exist_ok=True)
            keys.write_text(key.with_suffix(".pub").read_text())
            keys.chmod(0o600)
            hosts.append(FleetHost(name, box, address))
        yield Fleet(network, hosts[0], {h.name: h for h in hosts[1:]}, folder, key)
