"""Helpers for the packaging tests (imported by conftest.py and the test modules).

Kept apart from conftest.py so the test modules can import them: the tests folders are not
packages. Shared work is serialised between pytest-xdist workers, and between concurrent test
runs, with ``flock`` on files in the cache folder (:func:`file_lock`).

Nothing here installs the package on the machine the tests run on: dpkg runs inside
systemd-nspawn containers on an overlay of a cached rootfs (:class:`Container`), and
:func:`host_snapshot` records what the package would change on a host so that the suite can
check it left this one as it found it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "cybernetic-edge"


def is_root() -> bool:
    return os.geteuid() == 0


def in_ci() -> bool:
    """CI runs the suite as root, where no packaging test may skip (tests/conftest.py too)."""
    return bool(os.environ.get("CI"))


def _default_cache() -> Path:
    if is_root():
        return Path("/var/cache/cybernetic-test")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cybernetic-test"


CACHE = Path(os.environ.get("CYBERNETIC_TEST_CACHE") or _default_cache())

# tool -> the Debian package that provides it
SYSTEM_TOOLS = {
    "systemd-analyze": "systemd",
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "dpkg-deb": "dpkg",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mosquitto_passwd": "mosquitto",
    "/usr/sbin/mosquitto": "mosquitto",
    "shellcheck": "shellcheck",
    "dash": "dash",
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


# -- dpkg in a container -----------------------------------------------------------------------


class ContainerDpkg:
    """dpkg inside a container, for one package; the .deb files are bound at ``/debs``."""

    def __init__(self, box: Container) -> None:
        self.box = box

    def install(self, deb: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.box.sh("dpkg", "-i", f"{DEBS_MOUNT}/{deb.name}", check=check)

    def remove(self) -> None:
        self.box.sh("dpkg", "--remove", PACKAGE)

    def purge(self, *, check: bool = True) -> None:
        self.box.sh("dpkg", "--purge", PACKAGE, check=check)

    def version(self) -> str | None:
        """The installed version, None when not (fully) installed."""
        proc = self.box.sh("dpkg-query", "-W", "-f=${Status} ${Version}", PACKAGE, check=False)
        status, _, version = proc.stdout.rpartition(" ")
        return version if proc.returncode == 0 and status == "install ok installed" else None

    def status(self) -> str:
        return self.box.sh("dpkg-query", "-W", "-f=${Status}", PACKAGE, check=False).stdout


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
DEBS_MOUNT = "/debs"  # where containers see the built packages (read-only)


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
    """A Debian system in ``systemd-nspawn`` on an overlay of a cached rootfs.

    ``boot=True`` boots it (systemd is PID 1, units run); ``boot=False`` runs no init at all,
    only nspawn's stub init and a ``sleep``, which is a device image being prepared or a chroot:
    maintainer scripts see no running systemd. ``binds`` are host folders mounted read-only
    (host path -> container path). Every write lands in the overlay's upper layer under
    ``work``, which ``__exit__`` deletes: the rootfs and the host stay as they were.

    The container has its own network namespace (loopback only) and is not registered with
    machined (this machine may have no running systemd); commands run in it through nsenter
    into the namespaces of its PID 1.
    """

    def __init__(
        self,
        rootfs: Path,
        work: Path,
        *,
        boot: bool = True,
        binds: dict[Path, str] | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.work = work
        self.boot = boot
        self.binds = dict(binds or {})
        self.root = work / "root"
        self.log = work / "console.log"
        self.name = f"cybtest-{uuid.uuid4().hex[:8]}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader: int | None = None

    def path(self, path: str | Path) -> Path:
        """Where an absolute path of the container is on this machine (in the overlay)."""
        return self.root / str(path).lstrip("/")

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
        cmd = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.root}",
            f"--machine={self.name}",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--console=passive",
            *(f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()),
        ]
        # without an init: nspawn's stub init reaps, `sleep` keeps the container alive
        cmd += ["--boot"] if self.boot else ["--as-pid2", "/bin/sleep", "infinity"]
        with self.log.open("wb") as console:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
            )
        wait_for("the container's init", self._find_leader, 30, self.console)
        if self.boot:
            wait_for("the container to finish booting", self._booted, 120, self.console)

    def _find_leader(self) -> bool:
        """PID 1 of the container, once it runs what it was started with."""
        assert self._proc is not None
        if self._proc.poll() is not None:
            pytest.fail(f"systemd-nspawn exited with {self._proc.returncode}\n{self.console()}")
        if self.boot:
            leader = run("pgrep", "-P", str(self._proc.pid), "-x", "systemd", check=False)
            ready = leader
        else:
            # the stub init; set up once it has exec'd the sleep
            leader = run("pgrep", "-P", str(self._proc.pid), check=False)
            pids = leader.stdout.split()
            ready = run("pgrep", "-P", pids[0], "-x", "sleep", check=False) if pids else leader
        if leader.stdout.strip() and ready.stdout.strip():
            self._leader = int(leader.stdout.split()[0])
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
            if self._leader is not None and self.boot:
                self.sh("systemctl", "poweroff", check=False)
            else:
                self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        run("umount", self.root, check=False)
        shutil.rmtree(self.work, ignore_errors=True)


# -- what the package changes on a machine ------------------------------------------------------

# Trees whose every entry is recorded: what postinst, the units and dpkg write.
WATCHED_TREES = (
    "etc/cybernetic",
    "etc/mosquitto",
    "var/lib/cybernetic",
    "opt/cybernetic-edge",
    "usr/share/doc/cybernetic-edge",
    "lib/systemd/system/mosquitto.service.d",
    "usr/lib/systemd/system/mosquitto.service.d",
    "etc/systemd/system/mosquitto.service.d",
)
# Trees of which only the entries with "cybernetic" in their path are recorded (units,
# enablement symlinks, drop-in folders).
WATCHED_NAMES = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")
WATCHED_FILES = ("usr/bin/cybernetic",)
ACCOUNT_FILES = ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow")


def _entry(path: Path) -> str:
    st = path.lstat()
    kind = stat.filemode(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return f"{kind} {st.st_uid}:{st.st_gid} -> {path.readlink()}"
    if stat.S_ISDIR(st.st_mode):  # a folder's size and time follow its entries, listed apart
        return f"{kind} {st.st_uid}:{st.st_gid}"
    return f"{kind} {st.st_uid}:{st.st_gid} {st.st_size} bytes, mtime {st.st_mtime_ns}"


def _walk(top: Path) -> Iterator[Path]:
    if not top.exists() and not top.is_symlink():
        return
    yield top
    if top.is_dir():
        for folder, dirs, files in os.walk(top):
            for name in sorted(dirs + files):
                yield Path(folder) / name


def host_snapshot(root: Path = Path("/")) -> dict[str, str]:
    """What the package would change on the system at ``root``, as ``{what: state}``.

    Packages named ``cybernetic*`` (dpkg-query), ``cybernetic*`` accounts and groups, and every
    file the package, its maintainer scripts or its units write (WATCHED_*), with type, owner,
    size and modification time. Two snapshots compare equal when none of these changed.
    """
    snap: dict[str, str] = {}
    admindir = root / "var/lib/dpkg"
    if shutil.which("dpkg-query") and (admindir / "status").is_file():
        proc = subprocess.run(
            [
                "dpkg-query",
                f"--admindir={admindir}",
                "-W",
                "-f=${Package} ${db:Status-Abbrev} ${Version}\\n",
                "cybernetic*",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in proc.stdout.splitlines():
            name, _, state = line.partition(" ")
            snap[f"package {name}"] = state.strip()
    for accounts in ACCOUNT_FILES:
        path = root / accounts
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                name = line.split(":", 1)[0]
                if name.startswith("cybernetic"):
                    # shadow lines carry hashes and dates: record that the entry exists
                    shown = line if accounts in ("etc/passwd", "etc/group") else "present"
                    snap[f"/{accounts} {name}"] = shown
    paths: set[Path] = set()
    for tree in WATCHED_TREES:
        paths.update(_walk(root / tree))
    for tree in WATCHED_NAMES:
        paths.update(p for p in _walk(root / tree) if "cybernetic" in str(p.relative_to(root)))
    for file in WATCHED_FILES:
        paths.update(_walk(root / file))
    for path in paths:
        with contextlib.suppress(FileNotFoundError):  # gone while walking
            snap[f"/{path.relative_to(root)}"] = _entry(path)
    return snap


def snapshot_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """One line per difference between two :func:`host_snapshot` results."""
    changes = []
    for key in sorted(before.keys() | after.keys()):
        if key not in before:
            changes.append(f"added   {key}: {after[key]}")
        elif key not in after:
            changes.append(f"removed {key} (was: {before[key]})")
        elif before[key] != after[key]:
            changes.append(f"changed {key}: {before[key]} -> {after[key]}")
    return changes
