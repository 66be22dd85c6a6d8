"""What the built .deb holds, read with dpkg-deb (-f, -c, --fsys-tarfile, -e): no root needed.

The package depends on exactly the Python minor version its venv was built with, carries the
program and not a development environment, and ships the documentation and examples where
its configuration, units and maintainer scripts point.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import Builds
from deb_support import REPO, run

DOC = "usr/share/doc/cybernetic-edge"
OPT_BIN = "opt/cybernetic-edge/bin"
PYTHON_DEPENDS = REPO / "packaging/deb/python-depends.sh"


def python_minor() -> int:
    out = run("/usr/bin/python3", "-c", "import sys; print(sys.version_info.minor)").stdout
    return int(out)


def members(deb: Path) -> dict[str, bytes | None]:
    """Every path in the package (no leading ./), with the content of regular files."""
    found: dict[str, bytes | None] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for entry in tar:
                name = entry.name.removeprefix("./").rstrip("/")
                wanted = entry.isfile() and not name.startswith("opt/")
                handle = tar.extractfile(entry) if wanted else None
                found[name] = handle.read() if handle is not None else None
    assert p.returncode == 0
    return found


@pytest.fixture(scope="module")
def contents(debs: Builds) -> dict[str, bytes | None]:
    return members(debs.old)


def test_depends_on_the_python_minor_the_venv_was_built_with(debs: Builds) -> None:
    minor = python_minor()
    depends = [d.strip() for d in run("dpkg-deb", "-f", debs.old, "Depends").stdout.split(",")]
    on_python = [d for d in depends if d.split()[0].startswith("python")]
    assert on_python == [f"python3 (>= 3.{minor})", f"python3 (<< 3.{minor + 1})"], depends
    # and the venv inside is that version's: its libraries are in lib/python3.X
    listing = run("dpkg-deb", "-c", debs.old).stdout
    assert f"./opt/cybernetic-edge/lib/python3.{minor}/site-packages/" in listing


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("3 11", "python3 (>= 3.11), python3 (<< 3.12)"),  # Debian 12
        ("3 13", "python3 (>= 3.13), python3 (<< 3.14)"),  # Debian 13
        ("3 9", None),
        ("2 7", None),
        ("Python", None),
    ],
)
def test_python_range_is_computed_from_the_interpreter(
    tmp_path: Path, version: str, expected: str | None
) -> None:
    """build.sh's Depends for an interpreter of another release (a stand-in that says so)."""
    python = tmp_path / "python3"
    python.write_text(f"#!/bin/sh\necho '{version}'\n")
    python.chmod(0o755)
    proc = run("sh", PYTHON_DEPENDS, python, check=False)
    if expected is None:
        assert proc.returncode != 0
        assert proc.stdout == ""
        assert "python-depends.sh:" in proc.stderr
    else:
        assert (proc.returncode, proc.stdout.strip()) == (0, expected), proc.stderr


def test_bin_holds_the_program_and_the_interpreter_only(contents: dict[str, bytes | None]) -> None:
    in_bin = {n.removeprefix(f"{OPT_BIN}/") for n in contents if n.startswith(f"{OPT_BIN}/")}
    assert in_bin == {"cybernetic", "python", "python3", f"python3.{python_minor()}"}
    strays = [
        n for n in contents if re.search(r"/(activate[^/]*|Activate\.ps1)$", n, re.IGNORECASE)
    ]
    assert strays == []
    assert not [n for n in contents if re.search(r"/site-packages/(pip|setuptools)/", n)]


def test_docs_and_examples_are_shipped(contents: dict[str, bytes | None]) -> None:
    expected = {f"{DOC}/{doc.name}": doc for doc in sorted((REPO / "docs").glob("*.md"))}
    for example in sorted((REPO / "examples").rglob("*")):
        if example.is_file():
            expected[f"{DOC}/examples/{example.relative_to(REPO / 'examples')}"] = example
    expected[f"{DOC}/examples/serial-devices.conf"] = REPO / "systemd/examples/serial-devices.conf"
    assert len(expected) > 5
    missing = sorted(set(expected) - set(contents))
    assert missing == [], f"not in the package: {missing}"
    differ = sorted(name for name, src in expected.items() if contents[name] != src.read_bytes())
    assert differ == [], f"shipped files differ from the tree: {differ}"
    assert f"{DOC}/copyright" in contents


def test_references_to_the_docs_resolve(
    debs: Builds, contents: dict[str, bytes | None], tmp_path: Path
) -> None:
    """The configuration, units and maintainer scripts name installed files, not the tree."""
    shipped = {
        name: data.decode()
        for name, data in contents.items()
        if data is not None and name.startswith(("etc/", "lib/systemd/", "usr/lib/systemd/"))
    }
    run("dpkg-deb", "-e", debs.old, tmp_path / "DEBIAN")
    for script in ("preinst", "postinst", "prerm", "postrm"):
        shipped[f"DEBIAN/{script}"] = (tmp_path / "DEBIAN" / script).read_text()
    references = {
        (name, ref.rstrip(".,;:)\"'`"))
        for name, text in shipped.items()
        for ref in re.findall(r"/usr/share/doc/\S+", text)
    }
    # the configuration points at the docs, so this test has something to check
    assert {n for n, _ in references} >= {
        "etc/cybernetic/gateway.toml",
        "etc/cybernetic/cloud.toml",
    }
    broken = sorted((n, r) for n, r in references if r.lstrip("/") not in contents)
    assert broken == [], f"references to files the package does not ship: {broken}"
    # no reference to the source tree's docs/ folder, which is not on the device
    relative = sorted(
        (name, line.strip())
        for name, text in shipped.items()
        for line in text.splitlines()
        if re.search(r"(?<![\w/.-])docs/", line)
    )
    assert relative == [], relative
