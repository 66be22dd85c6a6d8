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
    host_snapshot,
    host_suite,
    is_root,
    project_version,
    rootfs_recipe,
    snapshot_changes,
)
from fleet_support import (
    CREATED_NAMESPACES,
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


@pytest.fixture(scope="session", autouse=True)
def host_left_unchanged() -> Iterator[None]:
    """Fail the run if the fleet tests changed this machine as the package or they would.

    The packaging tests' snapshot (packages, accounts, the package's files and units) before
    the first fleet test and after the last, and no fleet network namespace left behind.
    """
    if not is_root():
        yield
        return

    def snapshot() -> dict[str, str]:
        with file_lock("deb-build"):  # build.sh mounts over /opt while it builds
            return host_snapshot()

    before = snapshot()
    yield
    changes = snapshot_changes(before, snapshot())
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    listed = {line.split()[0] for line in netns.stdout.splitlines() if line.strip()}
    left = [name for name in CREATED_NAMESPACES if name in listed]
    if changes or left:
        pytest.fail(
            "the fleet tests changed this machine; they must change only their containers:\n"
            + "\n".join(changes[:50] + [f"network namespace {name} left" for name in left])
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
