"""Throwaway Debian hosts for the fleet tests, on one network, reached by Ansible over SSH.

Everything booting-related is the packaging tests' machinery (tests/packaging/deb_support.py:
the cached debootstrap rootfs, :class:`deb_support.Container`, the build script, the file
locks); this module adds only what a fleet needs on top of it:

- a cached *device layer* (:func:`build_device_layer`): an overlay upper layer over the rootfs
  with what a fresh Debian device has that a minbase debootstrap lacks (an SSH server, and
  python3-apt for Ansible's apt module), made once with apt and kept in the cache folder;
- a private network (:class:`FleetNetwork`): a hub network namespace holding a bridge, and for
  each container a veth pair from the bridge into the container's own network namespace
  (the containers start with nspawn's ``--private-network``, loopback only). Ansible runs in
  the hub namespace, so every address is one the tests made themselves; the host's own
  network is never touched;
- the packages a rollout needs (:func:`fleet_packages`): one build of this tree with
  ``build.sh`` (its venv cached), and two versions derived from it by repacking (a newer one,
  and a deliberately broken newer one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from deb_support import (
    CACHE,
    PACKAGE,
    Container,
    build_deb,
    file_lock,
    host_suite,
    rootfs_recipe,
    run,
)

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
GATEWAYS = ("gw-1", "gw-2", "gw-3")
# what a fresh device has besides the minimal system the package tests boot
DEVICE_PACKAGES = ("openssh-server", "python3-apt")
SUBNET = "10.231.47"  # inside the tests' own network namespaces only
HUB_ADDRESS = f"{SUBNET}.254"
CONTAINER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}


# -- the device layer ----------------------------------------------------------------------


def device_layer_recipe() -> str:
    return f"{rootfs_recipe().strip()} + {' '.join(DEVICE_PACKAGES)}\n"


def build_device_layer(rootfs: Path) -> Path:
    """The cached upper layer with :data:`DEVICE_PACKAGES` installed (apt, host network).

    Returns the layer's folder; a container stacks it over ``rootfs`` (see :func:`lowerdir`).
    """
    target = CACHE / f"device-layer-{host_suite()}"
    with file_lock("device-layer"):
        done = target / ".recipe"
        if done.is_file() and done.read_text() == device_layer_recipe():
            return target / "upper"
        scratch = target.with_name(target.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        for sub in ("upper", "work", "root"):
            (scratch / sub).mkdir(parents=True)
        root = scratch / "root"
        run(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={rootfs},upperdir={scratch / 'upper'},workdir={scratch / 'work'}",
            root,
        )
        try:
            script = (
                "set -e; apt-get update -qq; "
                "apt-get install -y -qq --no-install-recommends "
                f"{' '.join(DEVICE_PACKAGES)}; "
                "apt-get clean; rm -rf /var/lib/apt/lists/*; "
                "mkdir -p -m 0700 /root/.ssh"
            )
            run(
                "systemd-nspawn",
                "--quiet",
                f"--directory={root}",
                "--register=no",
                "--keep-unit",
                "--resolv-conf=copy-host",
                "--pipe",
                "/bin/sh",
                "-c",
                script,
                env={**CONTAINER_ENV, "SYSTEMD_NSPAWN_TMPFS_TMP": "1"},
            )
        finally:
            run("umount", root, check=False)
        shutil.rmtree(scratch / "work", ignore_errors=True)
        (scratch / "root").rmdir()
        (scratch / ".recipe").write_text(device_layer_recipe())
        scratch.rename(target)
        return target / "upper"


def lowerdir(layer: Path, rootfs: Path) -> Path:
    """The overlay ``lowerdir`` of a device: the layer over the rootfs (top one first).

    :class:`deb_support.Container` puts its ``rootfs`` argument into ``lowerdir=`` as it is,
    so a colon-separated stack is a rootfs too.
    """
    return Path(f"{layer}:{rootfs}")


# -- the network ------------------------------------------------------------------------------


def _leader(box: Container) -> int:
    """PID 1 of a booted container (its systemd)."""
    assert box._leader is not None, "the container is not running"
    return box._leader


CREATED_NAMESPACES: list[str] = []  # by this process, for the host guard


class FleetNetwork:
    """A bridge in a hub network namespace; each container joins it through a veth pair."""

    def __init__(self) -> None:
        self.hub = f"cybfleet-{uuid.uuid4().hex[:8]}"
        self.hosts = 0

    def __enter__(self) -> Self:
        run("ip", "netns", "add", self.hub)
        CREATED_NAMESPACES.append(self.hub)
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", "br0", "type", "bridge")
        self.ip("addr", "add", f"{HUB_ADDRESS}/24", "dev", "br0")
        self.ip("link", "set", "br0", "up")
        return self

    def ip(self, *args: str) -> None:
        run("ip", "-n", self.hub, *args)

    def attach(self, box: Container) -> str:
        """Give the container ``eth0`` on the bridge; returns its address."""
        self.hosts += 1
        address = f"{SUBNET}.{self.hosts}"
        port = f"v{self.hosts}"
        pid = str(_leader(box))
        self.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", pid)
        self.ip("link", "set", port, "master", "br0", "up")
        inside = ("nsenter", f"--net=/proc/{pid}/ns/net", "ip")
        run(*inside, "addr", "add", f"{address}/24", "dev", "eth0")
        run(*inside, "link", "set", "eth0", "up")
        return address

    def command(self, *cmd: str | Path) -> list[str]:
        """``cmd`` run inside the hub namespace (where the fleet's addresses are reachable)."""
        return ["ip", "netns", "exec", self.hub, *(str(c) for c in cmd)]

    def __exit__(self, *exc: object) -> None:
        run("ip", "netns", "del", self.hub, check=False)


# -- packages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetPackage:
    path: Path
    version: str

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


@dataclass(frozen=True)
class FleetPackages:
    first: FleetPackage  # what site.yml installs
    second: FleetPackage  # the upgrade
    broken: FleetPackage  # an upgrade whose gateway never reaches the cloud


# Dropped into the broken build's site-packages: a .pth line runs at interpreter start-up.
# `gateway run` then points its uplink at a closed port, through the documented environment
# override: the daemon starts, is READY and serves its metrics, but no heartbeat ever reaches
# the cloud - a failure only the rollout's cloud-side health check can see.
BROKEN_PTH = (
    "import os, sys; sys.argv[1:3] == ['gateway', 'run'] and "
    "os.environ.update(CYBERNETIC__UPLINK__BROKER__PORT='9')\n"
)


def _repack(source: Path, version: str, out: Path, *, broken: bool) -> FleetPackage:
    """``source`` with another version (and, ``broken``, the .pth above), via dpkg-deb."""
    tree = out / f"tree-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    run("dpkg-deb", "-R", source, tree)
    control = tree / "DEBIAN/control"
    text = control.read_text()
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", text, flags=re.MULTILINE))
    if broken:
        sites = sorted(tree.glob("opt/cybernetic-edge/lib/python3*/site-packages"))
        assert sites, "no site-packages in the package"
        (sites[0] / "zz_cybernetic_broken_build.pth").write_text(BROKEN_PTH)
        md5 = tree / "DEBIAN/md5sums"
        if md5.exists():  # keep dpkg --verify honest about the added file
            rel = (sites[0] / "zz_cybernetic_broken_build.pth").relative_to(tree)
            digest = hashlib.md5((tree / rel).read_bytes(), usedforsecurity=False).hexdigest()
            md5.write_text(md5.read_text() + f"{digest}  {rel}\n")
    arch = run("dpkg", "--print-architecture").stdout.strip()
    deb = out / f"{PACKAGE}_{version}_{arch}.deb"
    run("dpkg-deb", "--root-owner-group", "-Znone", "-b", tree, deb)
    shutil.rmtree(tree)
    return FleetPackage(deb, version)


def fleet_packages(base_version: str, run_id: str) -> FleetPackages:
    """One build of this tree and two repacks of it, once per test run (shared by workers)."""
    out = CACHE / "fleet-debs"
    first = f"{base_version}+fleet1"
    arch = run("dpkg", "--print-architecture").stdout.strip()

    def pkg(version: str) -> FleetPackage:
        return FleetPackage(out / f"{PACKAGE}_{version}_{arch}.deb", version)

    packages = FleetPackages(
        pkg(first), pkg(f"{base_version}+fleet2"), pkg(f"{base_version}+fleet3")
    )
    with file_lock("deb-build"):  # build.sh's work folder is shared with the packaging tests
        marker = out / f".run-{run_id}"
        if not marker.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            built = build_deb(first, _reader_schema(), out)
            assert built == packages.first.path, built
            _repack(built, packages.second.version, out, broken=False)
            _repack(built, packages.broken.version, out, broken=True)
            marker.touch()
    return packages


def _reader_schema() -> int:
    from amcp.runtime.statemarker import STATE_SCHEMA  # noqa: PLC0415 - the build's default

    return STATE_SCHEMA


# -- a device -------------------------------------------------------------------------------


@dataclass
class FleetHost:
    """One booted container on the fleet network."""

    name: str
    box: Container
    address: str

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.box.sh(*cmd, check=check)

    def package_version(self) -> str | None:
        proc = self.sh("dpkg-query", "-W", "-f=${Status} ${Version}", PACKAGE, check=False)
        status, _, version = proc.stdout.rpartition(" ")
        return version if proc.returncode == 0 and status == "install ok installed" else None

    def http_text(self, url: str) -> str:
        """GET ``url`` from inside the host (its loopback); the body of an error answer too."""
        code = (
            "import json, sys, urllib.request\n"
            "try:\n"
            "    body = urllib.request.urlopen(sys.argv[1], timeout=5).read()\n"
            "except Exception as exc:\n"
            "    body = getattr(exc, 'read', lambda: b'null')()\n"
            "sys.stdout.write(body.decode())\n"
        )
        return self.sh("python3", "-c", code, url).stdout

    def http_json(self, url: str) -> Any:
        return json.loads(self.http_text(url) or "null")

    def journal(self, unit: str) -> str:
        return self.box.journal(unit)


# -- the fleet and Ansible ------------------------------------------------------------------


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
