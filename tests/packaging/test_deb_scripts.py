"""The build script and the maintainer scripts pass shellcheck, and the scripts are POSIX sh.

Maintainer scripts run as root on every device during installs and upgrades, under dash:
a bashism or an unquoted expansion there breaks an upgrade in the field.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from deb_support import REPO, run

DEBIAN = REPO / "packaging/deb/debian"
MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm")


@pytest.mark.parametrize("script", MAINTAINER_SCRIPTS)
def test_maintainer_script_is_clean_posix_sh(shellcheck: None, script: str) -> None:
    path = DEBIAN / script
    assert path.read_text().startswith("#!/bin/sh\n")
    proc = run("shellcheck", "--shell=sh", path, check=False)
    assert proc.returncode == 0, proc.stdout
    run("dash", "-n", path)


def test_build_script_is_clean(shellcheck: None) -> None:
    proc = run("shellcheck", REPO / "packaging/deb/build.sh", check=False)
    assert proc.returncode == 0, proc.stdout


def test_python_depends_helper_is_clean_posix_sh(shellcheck: None) -> None:
    path = REPO / "packaging/deb/python-depends.sh"
    assert path.read_text().startswith("#!/bin/sh\n")
    proc = run("shellcheck", "--shell=sh", path, check=False)
    assert proc.returncode == 0, proc.stdout
    run("dash", "-n", path)


def test_shellcheck_catches_an_unquoted_expansion(shellcheck: None, tmp_path: Path) -> None:
    bad = tmp_path / "postinst"
    bad.write_text("#!/bin/sh\nset -e\nrm -rf $1/etc\n")
    assert run("shellcheck", "--shell=sh", bad, check=False).returncode != 0
