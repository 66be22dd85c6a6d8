"""The Debian package with dpkg: install, run, upgrade, downgrade, remove, purge.

All of it happens in one container per session (conftest.dpkg_box), never on this machine:
a Debian of the host's release on an overlay, with no init running, which is itself a case
the package must handle (an image being prepared, a chroot): the maintainer scripts configure
everything and start nothing. Each test starts and ends with the package purged there. The
package is real (build.sh, with the venv cached between runs); two builds differ in version
and in the reader schema their preinst accepts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import Builds
from cryptography import x509
from deb_support import CACHE, Container, ContainerDpkg, project_version

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

OPT = Path("/opt/cybernetic-edge")
ETC = Path("/etc/cybernetic")
STATE = Path("/var/lib/cybernetic")
CLI = OPT / "bin/cybernetic"


def write_marker(box: Container, schema: int, min_reader: int) -> Path:
    """The marker the daemon keeps next to its database (contract in debian/preinst)."""
    marker = box.path(STATE / "gateway/SCHEMA_VERSION")
    marker.write_text(f"schema={schema}\nmin_reader={min_reader}\n")
    return marker


def test_fresh_install(box_dpkg: ContainerDpkg, debs: Builds) -> None:
    """One installation, every check that only reads (installations are the slow part)."""
    box = box_dpkg.box
    box_dpkg.install(debs.old)
    assert box_dpkg.version() == debs.old_version

    # runs, from the venv and from PATH
    assert box.sh(str(CLI), "--version").stdout.strip() == f"cybernetic {project_version()}"
    assert box.sh("/usr/bin/cybernetic", "--version").returncode == 0
    # the shipped configuration is valid for the daemon it ships with
    for name in ("gateway.toml", "cloud.toml"):
        assert "valid" in box.sh(str(CLI), "config", "check", str(ETC / name)).stdout
    # the venv is Debian's interpreter at its final path, with no trace of the build folder
    prefix = box.sh(str(OPT / "bin/python"), "-c", "import sys; print(sys.prefix, sys.base_prefix)")
    assert prefix.stdout.split() == [str(OPT), "/usr"]
    leaks = box.sh("grep", "-rIl", str(CACHE), str(OPT), check=False)
    assert leaks.stdout == "", f"build paths baked into the venv:\n{leaks.stdout}"

    # account, folders and secrets
    assert box.sh("id", "-un", "cybernetic").stdout.strip() == "cybernetic"

    def mode(path: Path) -> list[str]:
        return box.sh("stat", "-c", "%U:%G %a", str(path)).stdout.split()

    assert mode(STATE / "gateway") == ["cybernetic:cybernetic", "750"]
    assert mode(ETC / "secrets") == ["root:cybernetic", "750"]
    password = ETC / "secrets/local-broker.password"
    assert mode(password) == ["root:cybernetic", "640"]
    assert len(box.path(password).read_text().strip()) >= 32
    assert mode(ETC / "mosquitto/passwd") == ["root:mosquitto", "640"]
    link_secret = ETC / "secrets/link.secret"
    assert mode(link_secret) == ["root:cybernetic", "640"]
    assert len(bytes.fromhex(box.path(link_secret).read_text())) == 32
    assert mode(ETC / "secrets/uplink.password") == ["root:cybernetic", "640"]
    broker_users = box.path(ETC / "mosquitto/passwd").read_text()
    assert re.search(r"^gateway:\$", broker_users, re.MULTILINE), broker_users
    conf = box.path(ETC / "mosquitto.conf").read_text()
    assert "password_file /etc/cybernetic/mosquitto/passwd" in conf
    assert "allow_anonymous false" in conf
    # plain MQTT on this host only; devices on the network come over TLS with the device CA
    assert "listener 1883 127.0.0.1" in conf
    assert "listener 8883 0.0.0.0" in conf
    tls = ETC / "mosquitto/tls"
    assert mode(tls / "server.key") == ["mosquitto:mosquitto", "600"]
    assert mode(tls / "devices-ca.pem") == ["mosquitto:mosquitto", "644"]
    assert mode(tls / "ca/ca.key") == ["root:root", "600"]
    server = x509.load_pem_x509_certificate(box.path(tls / "server.pem").read_bytes())
    server.verify_directly_issued_by(
        x509.load_pem_x509_certificate(box.path(tls / "devices-ca.pem").read_bytes())
    )

    # enabled for the next boot, not started: there is no running systemd here
    wants = box.path("/etc/systemd/system/multi-user.target.wants")
    assert (wants / "cybernetic-gateway.service").is_symlink()
    assert not (wants / "cybernetic-cloud.service").exists()
    started = box.sh("pgrep", "-af", "/opt/cybernetic-edge/bin/", check=False).stdout
    assert started == "", f"postinst started a daemon without systemd:\n{started}"
    # the installed units verify against the real binary
    for unit in ("cybernetic-gateway.service", "cybernetic-cloud.service"):
        proc = box.sh("systemd-analyze", "verify", f"/lib/systemd/system/{unit}", check=False)
        assert (proc.returncode, proc.stdout + proc.stderr) == (0, ""), unit
    conffiles = box.sh("dpkg-query", "-W", "-f=${Conffiles}", "cybernetic-edge").stdout
    assert {line.split()[0] for line in conffiles.strip().splitlines()} == {
        "/etc/cybernetic/gateway.toml",
        "/etc/cybernetic/cloud.toml",
        "/etc/cybernetic/mosquitto.conf",
        "/etc/cybernetic/mosquitto/acl",
    }


def test_upgrade_keeps_configuration_and_state(box_dpkg: ContainerDpkg, debs: Builds) -> None:
    box = box_dpkg.box
    box_dpkg.install(debs.old)
    gateway_toml = box.path(ETC / "gateway.toml")
    edited = gateway_toml.read_text().replace('id = "gw-1"', 'id = "gw-edited"')
    assert edited != gateway_toml.read_text()
    gateway_toml.write_text(edited)
    password = box.path(ETC / "secrets/local-broker.password").read_text()
    link_secret = box.path(ETC / "secrets/link.secret").read_text()
    outbox = box.path(STATE / "gateway/outbox.sqlite3")
    outbox.write_bytes(b"state that must survive")
    write_marker(box, schema=1, min_reader=1)

    box_dpkg.install(debs.new)

    assert box_dpkg.version() == debs.new_version
    assert gateway_toml.read_text() == edited
    assert box.path(ETC / "secrets/local-broker.password").read_text() == password
    assert box.path(ETC / "secrets/link.secret").read_text() == link_secret
    assert outbox.read_bytes() == b"state that must survive"
    assert box.sh(str(CLI), "config", "check", str(ETC / "gateway.toml")).returncode == 0


def test_downgrade_refused_when_state_is_too_new(box_dpkg: ContainerDpkg, debs: Builds) -> None:
    box_dpkg.install(debs.new)
    write_marker(box_dpkg.box, schema=debs.new_schema, min_reader=debs.new_schema)

    proc = box_dpkg.install(debs.old, check=False)

    assert proc.returncode != 0
    assert "refusing to install" in proc.stderr
    assert f"schema {debs.new_schema}" in proc.stderr
    assert f"reads up to schema {debs.old_schema}" in proc.stderr
    # the newer version stays installed and working
    assert box_dpkg.version() == debs.new_version
    assert box_dpkg.box.sh(str(CLI), "--version").returncode == 0


def test_downgrade_allowed_when_older_code_reads_the_state(
    box_dpkg: ContainerDpkg, debs: Builds
) -> None:
    box_dpkg.install(debs.new)
    write_marker(box_dpkg.box, schema=debs.new_schema, min_reader=debs.old_schema)

    box_dpkg.install(debs.old)

    assert box_dpkg.version() == debs.old_version


def test_remove_keeps_configuration_and_purge_deletes_it(
    box_dpkg: ContainerDpkg, debs: Builds
) -> None:
    box = box_dpkg.box
    box_dpkg.install(debs.old)
    box.path(STATE / "gateway/outbox.sqlite3").write_bytes(b"x")

    box_dpkg.remove()
    assert not box.path(CLI).exists()
    assert box.path(ETC / "gateway.toml").is_file()
    assert box.path(STATE / "gateway/outbox.sqlite3").is_file()
    assert box_dpkg.status().startswith("deinstall ok config-files")
    # the broker is back on Debian's configuration: the drop-in went with the program
    assert not box.path("/lib/systemd/system/mosquitto.service.d/cybernetic.conf").exists()

    box_dpkg.purge()
    assert not box.path(ETC).exists()
    assert not box.path(STATE).exists()
    assert not box.path(OPT).exists()
    assert box_dpkg.version() is None
