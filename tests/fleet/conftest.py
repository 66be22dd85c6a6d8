"""Fixtures for the fleet tests: a cloud host and three gateways, booted Debian containers on
one private network, and Ansible (from this venv) driving the playbooks in ansible/ over SSH.

The hosts are the packaging tests' containers (tests/packaging/deb_support.py) on the same
cached rootfs, with the cached device layer of fleet_support.py on top; the package is one
build of this tree (build.sh, its venv cached) and two repacks of it. Nothing here changes
this machine: every host is an overlay deleted after use, the network is network namespaces
made and deleted by the fixture, and Ansible's own files go to a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packaging"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
    FleetHost,
    FleetNetwork,
    FleetPackages,
    build_device_layer,
    fleet_packages,
    lowerdir,
)
from needs import needs, needs_root

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
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
GATEWAYS = ("gw-1", "gw-2", "gw-3")


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


@dataclass
class PlaybookRun:
    rc: int
    output: str
    # host -> {"ok": n, "changed": n, "failed": n, ...} from the PLAY RECAP
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap.items()}


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    recap: dict[str, dict[str, int]] = {}
    _, _, tail = output.rpartition("PLAY RECAP")
    for line in tail.splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            counts = dict(re.findall(r"(\w+)=(\d+)", match.group(2)))
            recap[match.group(1)] = {k: int(v) for k, v in counts.items()}
    return recap


@dataclass
class Fleet:
    """The booted hosts and a way to run a playbook against them."""

    network: FleetNetwork
    cloud: FleetHost
    gateways: dict[str, FleetHost]
    folder: Path
    key: Path

    @property
    def hosts(self) -> list[FleetHost]:
        return [self.cloud, *self.gateways.values()]

    def write_inventory(self, packages: dict[str, tuple[Path, str]], **group_vars: object) -> Path:
        """The example inventory's shape (groups by site and zone) with these hosts.

        ``packages``: host (or "all") -> (.deb, sha256). Written as JSON, which is YAML.
        """

        def host(h: FleetHost) -> dict[str, object]:
            found: dict[str, object] = {"ansible_host": h.address}
            if h.name in packages:
                deb, sha = packages[h.name]
                found |= {"cybernetic_package_file": str(deb), "cybernetic_package_sha256": sha}
            return found

        deb, sha = packages["all"]
        zone_a = {n: host(self.gateways[n]) for n in GATEWAYS[:2]}
        zone_b = {n: host(self.gateways[n]) for n in GATEWAYS[2:]}
        inventory = {
            "all": {
                "vars": {
                    "ansible_user": "root",
                    "cybernetic_package_file": str(deb),
                    "cybernetic_package_sha256": sha,
                    **group_vars,
                },
                "children": {
                    "cybernetic_cloud": {"hosts": {self.cloud.name: host(self.cloud)}},
                    "cybernetic_gateways": {
                        "children": {
                            "site_test": {
                                "vars": {"gateway_site": "test"},
                                "children": {
                                    "zone_test_a": {
                                        "vars": {"gateway_zone": "zone-a"},
                                        "hosts": zone_a,
                                    },
                                    "zone_test_b": {
                                        "vars": {"gateway_zone": "zone-b"},
                                        "hosts": zone_b,
                                    },
                                },
                            }
                        }
                    },
                },
            }
        }
        path = self.folder / "inventory.yml"
        path.write_text(json.dumps(inventory, indent=2))
        return path

    def playbook(self, name: str, inventory: Path, *args: str, timeout: float = 600) -> PlaybookRun:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")},
            "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
            "ANSIBLE_HOME": str(self.folder / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(self.folder / "ansible-tmp"),
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.key),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s "
            "-o UserKnownHostsFile=/dev/null",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.folder / "cp"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        cmd = self.network.command(
            VENV_BIN / "ansible-playbook", "-i", inventory, ANSIBLE / name, *args
        )
        proc = subprocess.run(
            cmd,
            cwd=ANSIBLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = proc.stdout + proc.stderr
        (self.folder / f"{name}.{len(list(self.folder.glob(name + '.*')))}.log").write_text(output)
        return PlaybookRun(proc.returncode, output, parse_recap(proc.stdout))


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
