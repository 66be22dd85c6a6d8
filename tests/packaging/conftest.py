"""Fixtures for the packaging tests: system tools, the built .deb, containers, a host guard.

Nothing here changes the machine the tests run on. Every install, upgrade, removal and purge
of the package, every account it creates and every service it starts happens inside
systemd-nspawn containers on an overlay of a cached rootfs, deleted after use; a session
guard (:func:`host_left_unchanged`) fails the run if the packages, accounts or files the
package would touch changed on this machine anyway.

What needs root (apt, debootstrap, mounting the overlay, nspawn) is asked for with
:func:`require`: as root every missing tool is installed with apt and a test that still lacks
something fails, saying what; as another user such a test is skipped with the reason
(``pytest -ra`` lists them), and everything else (building the .deb in a user namespace,
inspecting it, shellcheck, systemd-analyze) runs. CI runs as root and sets ``CI``: there a
packaging test that skips, for any reason, is reported as failed (pytest_runtest_makereport
below), because a silently skipped packaging test lets a broken package land.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deb_support import (
    CACHE,
    DEBS_MOUNT,
    PACKAGE,
    SYSTEM_TOOLS,
    Container,
    ContainerDpkg,
    build_deb,
    build_rootfs,
    file_lock,
    host_snapshot,
    host_suite,
    in_ci,
    is_root,
    missing_packages,
    project_version,
    rootfs_recipe,
    run,
    snapshot_changes,
)

from tests.needs import needs


@dataclass
class ToolSetup:
    """What installing the missing tools did: the apt error, if any."""

    apt_error: str | None = None
    installed: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def tool_setup() -> ToolSetup:
    """As root, every tool the packaging tests use, installed with apt when missing.

    Never fails or skips by itself (the host guard depends on it): :func:`require` reports.
    """
    setup = ToolSetup()
    if not is_root():
        return setup
    with file_lock("apt"):
        missing = missing_packages()
        if not missing:
            return setup
        if shutil.which("apt-get") is None:
            setup.apt_error = f"no apt-get to install {missing}"
            return setup
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            run("apt-get", "update", "-qq", env=env)
            run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)
        except pytest.fail.Exception as exc:
            setup.apt_error = str(exc)
        setup.installed = missing
    return setup


def require(setup: ToolSetup, *, root: str | None = None, tools: tuple[str, ...] = ()) -> None:
    """Skip (not root, not CI) or fail (root or CI) unless this test can run here.

    ``root`` says why the test needs root; ``tools`` are commands from SYSTEM_TOOLS.
    """
    problems = []
    if root is not None and not is_root():
        problems.append(f"needs root: {root}")
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        packages = sorted({SYSTEM_TOOLS.get(t, t) for t in absent})
        problems.append(
            f"needs {', '.join(absent)} (apt-get install {' '.join(packages)})"
            + (f"; apt failed: {setup.apt_error}" if setup.apt_error else "")
        )
    if not problems:
        return
    reason = "; ".join(problems)
    if is_root():
        pytest.fail(f"{reason} (as root no packaging test may skip)")
    needs(False, reason)  # fails in CI; elsewhere skips saying how to include it


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, None]:
    """In CI a skipped packaging test is a failed one."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} skipped in CI, where nothing may skip: {reason}"


@pytest.fixture(scope="session", autouse=True)
def host_left_unchanged(tool_setup: ToolSetup) -> Iterator[None]:
    """Fail the run if the packaging tests changed this machine the way the package would.

    A snapshot before the first packaging test and one after the last (of this pytest-xdist
    worker): packages named cybernetic*, cybernetic accounts and groups, /etc/cybernetic,
    /etc/mosquitto, the units and drop-ins, /opt/cybernetic-edge, /var/lib/cybernetic
    (deb_support.host_snapshot). A change is reported as an error of the session's last test.
    """

    def snapshot() -> dict[str, str]:
        # build.sh, as root, makes /opt/cybernetic-edge for its mount while the venv is built
        # and removes it after: never look while another worker or run is building
        with file_lock("deb-build"):
            return host_snapshot()

    before = snapshot()
    yield
    changes = snapshot_changes(before, snapshot())
    if changes:
        pytest.fail(
            "the packaging tests changed this machine; they must change only containers:\n"
            + "\n".join(changes[:50])
        )


@pytest.fixture
def systemd_analyze(tool_setup: ToolSetup) -> None:
    require(tool_setup, tools=("systemd-analyze", "/usr/sbin/mosquitto"))


@pytest.fixture
def shellcheck(tool_setup: ToolSetup) -> None:
    require(tool_setup, tools=("shellcheck", "dash"))


@dataclass(frozen=True)
class Builds:
    """Two builds of this tree, for upgrade and downgrade tests."""

    old: Path
    new: Path
    old_version: str
    new_version: str
    old_schema: int = 1
    new_schema: int = 2

    @property
    def folder(self) -> Path:
        return self.old.parent


@pytest.fixture(scope="session")
def debs(tool_setup: ToolSetup) -> Builds:
    """Built once per test run from the working tree and shared by the xdist workers.

    The venv inside is reused from the cache while the sources are unchanged (build.sh's
    stamp), so a run repacks in seconds; a changed tree rebuilds it (about half a minute).
    Needs no root: build.sh uses a user namespace then.
    """
    require(tool_setup, tools=("dpkg-deb", "unshare"))
    if not is_root():
        userns = run("unshare", "--user", "--map-root-user", "--mount", "true", check=False)
        needs(
            userns.returncode == 0,
            f"root or unprivileged user namespaces to build the package ({userns.stderr.strip()})",
        )
    base = project_version()
    old_version, new_version = f"{base}+test1", f"{base}+test2"
    out = CACHE / "debs"
    arch = run("dpkg", "--print-architecture").stdout.strip()
    builds = Builds(
        old=out / f"{PACKAGE}_{old_version}_{arch}.deb",
        new=out / f"{PACKAGE}_{new_version}_{arch}.deb",
        old_version=old_version,
        new_version=new_version,
    )
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    with file_lock("deb-build"):
        marker = out / f".run-{run_id}"
        if not marker.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            build_deb(old_version, builds.old_schema, out)
            build_deb(new_version, builds.new_schema, out)
            marker.touch()
    return builds


@pytest.fixture(scope="session")
def rootfs(tool_setup: ToolSetup) -> Path:
    """A minimal Debian of the host's release with systemd and the package's dependencies.

    Built once with debootstrap (a minute or so, about 300 MB) and kept in the cache folder
    between runs; tests never write to it (containers run on an overlay on top of it).
    """
    require(
        tool_setup,
        root="debootstrap, overlay mounts and systemd-nspawn containers",
        tools=("debootstrap", "systemd-nspawn", "nsenter"),
    )
    target = CACHE / f"rootfs-{host_suite()}"
    with file_lock("rootfs"):
        done = target / ".cybernetic-rootfs"
        if not (done.is_file() and done.read_text() == rootfs_recipe()):
            build_rootfs(target)
    return target


@pytest.fixture(scope="session")
def dpkg_box(
    rootfs: Path, debs: Builds, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    """One container per session (per xdist worker) for dpkg: no init, the .debs at /debs.

    Not booted: no systemd runs in it, the case of an image being prepared or a chroot, where
    the maintainer scripts must configure everything and start nothing.
    """
    work = tmp_path_factory.mktemp("dpkg-box")
    with Container(rootfs, work / "c", boot=False, binds={debs.folder: DEBS_MOUNT}) as box:
        yield box


@pytest.fixture
def box_dpkg(dpkg_box: Container) -> Iterator[ContainerDpkg]:
    """dpkg in the session's container, starting and ending with the package purged."""
    dpkg = ContainerDpkg(dpkg_box)
    dpkg.purge(check=False)
    yield dpkg
    dpkg.purge(check=False)
