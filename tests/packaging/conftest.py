"""Fixtures for the packaging tests: system tools, the built .deb, host dpkg, a cached rootfs.

These tests install packages on the machine they run on and boot containers, so they need root
on a Debian machine (CI and the development machines are throwaway Debian, root). Missing tools
are installed with apt; when that is impossible the tests fail and say what to install: a
packaging test that silently skips would let a broken package land.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deb_support import (
    CACHE,
    PACKAGE,
    HostDpkg,
    build_deb,
    build_rootfs,
    file_lock,
    host_suite,
    missing_packages,
    project_version,
    rootfs_recipe,
    run,
)


@pytest.fixture(scope="session")
def system_tools() -> None:
    """Every tool the packaging tests use, installed with apt when missing."""
    if os.geteuid() != 0:
        pytest.fail("the packaging tests install packages and boot containers: run them as root")
    with file_lock("apt"):
        missing = missing_packages()
        if not missing:
            return
        if shutil.which("apt-get") is None:
            pytest.fail(f"missing system packages {missing} and no apt-get to install them")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", "update", "-qq", env=env)
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)
        still = missing_packages()
        if still:
            pytest.fail(f"apt-get installed {missing} but these are still missing: {still}")


@dataclass(frozen=True)
class Builds:
    """Two builds of this tree, for upgrade and downgrade tests."""

    old: Path
    new: Path
    old_version: str
    new_version: str
    old_schema: int = 1
    new_schema: int = 2


@pytest.fixture(scope="session")
def debs(system_tools: None) -> Builds:
    """Built once per test run from the working tree and shared by the xdist workers.

    The venv inside is reused from the cache while the sources are unchanged (build.sh's
    stamp), so a run repacks in seconds; a changed tree rebuilds it (about half a minute).
    """
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


@pytest.fixture
def host_dpkg(system_tools: None) -> Iterator[HostDpkg]:
    """dpkg on this machine, one test at a time, starting and ending with the package purged."""
    with file_lock("host-dpkg"):
        run("dpkg", "--purge", PACKAGE, check=False)
        yield HostDpkg()
        run("dpkg", "--purge", PACKAGE, check=False)


@pytest.fixture(scope="session")
def rootfs(system_tools: None) -> Path:
    """A minimal Debian of the host's release with systemd and the package's dependencies.

    Built once with debootstrap (a minute or so, about 300 MB) and kept in the cache folder
    between runs; tests never write to it (they boot an overlay on top of it).
    """
    target = CACHE / f"rootfs-{host_suite()}"
    with file_lock("rootfs"):
        done = target / ".cybernetic-rootfs"
        if not (done.is_file() and done.read_text() == rootfs_recipe()):
            build_rootfs(target)
    return target
