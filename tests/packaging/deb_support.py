"""Helpers for the packaging tests (imported by conftest.py and the test modules).

Kept apart from conftest.py so the test modules can import them: the tests folders are not
packages. Shared work is serialised between pytest-xdist workers, and between concurrent test
runs, with ``flock`` on files in the cache folder (:func:`file_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CYBERNETIC_TEST_CACHE", "/var/cache/cybernetic-test"))
PACKAGE = "cybernetic-edge"

# tool -> the Debian package that provides it
SYSTEM_TOOLS = {
    "systemd-analyze": "systemd",
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "dpkg-deb": "dpkg",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mosquitto_passwd": "mosquitto",
    "shellcheck": "shellcheck",
}
# what the test rootfs gets besides the base system: an init, and the package's Depends
ROOTFS_INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3", "mosquitto", "procps")


@contextlib.contextmanager
def file_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock shared by every worker and every concurrent test run."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(*cmd: str | Path, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; a failure message carries that output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def missing_packages() -> list[str]:
    """Debian packages to install before the packaging tests can run."""
    missing = {pkg for tool, pkg in SYSTEM_TOOLS.items() if shutil.which(tool) is None}
    debian_python = Path("/usr/bin/python3")
    if not debian_python.exists():
        missing.add("python3")
    elif subprocess.run([debian_python, "-c", "import ensurepip, venv"], check=False).returncode:
        missing.add("python3-venv")
    return sorted(missing)


# -- building ---------------------------------------------------------------------------------


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as fh:
        version: str = tomllib.load(fh)["project"]["version"]
        return version


def build_deb(version: str, reader_schema: int, out_dir: Path) -> Path:
    """``packaging/deb/build.sh`` with a fixed version and reader schema; the venv is cached."""
    env = {
        **os.environ,
        "DEB_VERSION": version,
        "READER_SCHEMA": str(reader_schema),
        "BUILD_DIR": str(CACHE / "deb-build"),
        "OUT_DIR": str(out_dir),
        # what is tested is the content; compressing 100 MB twice per run is dpkg-deb's job
        "DEB_COMPRESSION": "none",
    }
    proc = run("bash", REPO / "packaging/deb/build.sh", env=env)
    deb = Path(proc.stdout.strip().splitlines()[-1])
    assert deb.is_file(), f"build.sh printed {deb}, which is not a file"
    return deb


# -- dpkg on this machine ---------------------------------------------------------------------


class HostDpkg:
    """dpkg on the test machine, for one package."""

    def install(self, deb: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("dpkg", "-i", deb, check=check)

    def remove(self) -> None:
        run("dpkg", "--remove", PACKAGE)

    def purge(self) -> None:
        run("dpkg", "--purge", PACKAGE)

    def version(self) -> str | None:
        """The installed version, None when not (fully) installed."""
        proc = run("dpkg-query", "-W", "-f=${Status} ${Version}", PACKAGE, check=False)
        status, _, version = proc.stdout.rpartition(" ")
        return version if proc.returncode == 0 and status == "install ok installed" else None

    def status(self) -> str:
        return run("dpkg-query", "-W", "-f=${Status}", PACKAGE, check=False).stdout


# -- the test rootfs --------------------------------------------------------------------------


def host_suite() -> str:
    text = Path("/etc/os-release").read_text()
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.MULTILINE)
    if match is None:
        pytest.fail("/etc/os-release names no VERSION_CODENAME: not a Debian release?")
    return match.group(1)


def debian_mirror(suite: str) -> str:
    """The Debian archive apt uses here for ``suite`` (deb822 or one-line sources)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
            if uris and suites and suite in suites.group(1).split():
                return uris.group(1)
        for line in text.splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    return "http://deb.debian.org/debian"


def build_rootfs(target: Path) -> None:
    """debootstrap a minimal system of the host's release into ``target`` (atomically)."""
    suite = host_suite()
    scratch = target.with_name(target.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    run(
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(ROOTFS_INCLUDE)}",
        suite,
        scratch,
        debian_mirror(suite),
    )
    (scratch / ".cybernetic-rootfs").write_text(rootfs_recipe())
    scratch.rename(target)


def rootfs_recipe() -> str:
    return f"{host_suite()} {' '.join(ROOTFS_INCLUDE)}\n"


# -- a booted container -----------------------------------------------------------------------

CONTAINER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TERM": "dumb"}


def wait_for(
    what: str, probe: Callable[[], bool], timeout: float, details: Callable[[], str]
) -> None:
    """Poll ``probe`` until it holds; on time-out fail with ``details()`` (logs, states)."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:.0f}s\n{details()}")
        time.sleep(0.25)


class Container:
    """A Debian system booted with ``systemd-nspawn -b`` on an overlay of a cached rootfs.

    The container has its own network namespace (loopback only) and is not registered with
    machined (this machine may have no running systemd); commands run in it through nsenter
    into the namespaces of its PID 1.
    """

    def __init__(self, rootfs: Path, work: Path) -> None:
        self.rootfs = rootfs
        self.work = work
        self.root = work / "root"
        self.log = work / "console.log"
        self.name = f"cybtest-{uuid.uuid4().hex[:8]}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader: int | None = None

    def __enter__(self) -> Self:
        for sub in ("upper", "overlay-work", "root"):
            (self.work / sub).mkdir(parents=True)
        run(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={self.rootfs},upperdir={self.work / 'upper'},"
            f"workdir={self.work / 'overlay-work'}",
            self.root,
        )
        try:
            self._boot()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _boot(self) -> None:
        with self.log.open("wb") as console:
            self._proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--quiet",
                    "--boot",
                    f"--directory={self.root}",
                    f"--machine={self.name}",
                    "--private-network",
                    "--register=no",
                    "--keep-unit",
                    "--console=passive",
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        wait_for("the container's init", self._find_leader, 30, self.console)
        wait_for("the container to finish booting", self._booted, 120, self.console)

    def _find_leader(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            pytest.fail(f"systemd-nspawn exited with {self._proc.returncode}\n{self.console()}")
        children = run("pgrep", "-P", str(self._proc.pid), "-x", "systemd", check=False)
        if children.stdout.strip():
            self._leader = int(children.stdout.split()[0])
            return True
        return False

    def _booted(self) -> bool:
        state = self.sh("systemctl", "is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def console(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container."""
        assert self._leader is not None
        return run(
            "nsenter",
            f"--target={self._leader}",
            "--all",
            "--",
            *cmd,
            check=check,
            env=CONTAINER_ENV,
        )

    def journal(self, unit: str) -> str:
        proc = self.sh("journalctl", "--no-pager", "-n", "80", "-u", unit, check=False)
        return proc.stdout + proc.stderr

    def show(self, unit: str, prop: str) -> str:
        return self.sh("systemctl", "show", "--value", "-p", prop, unit).stdout.strip()

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            if self._leader is not None:
                self.sh("systemctl", "poweroff", check=False)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        run("umount", self.root, check=False)
        shutil.rmtree(self.work, ignore_errors=True)
