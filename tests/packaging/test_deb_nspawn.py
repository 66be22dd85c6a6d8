"""A real unit run: boot Debian with systemd-nspawn, install the package, watch the gateway.

The container is a minimal Debian of the host's release (debootstrap, cached between runs) in
its own network namespace. Installing the package there is what a person does on a device;
postinst sees a running systemd, points Mosquitto at the shipped configuration and starts the
gateway, which must reach READY (Type=notify), report its status, answer on its metrics
endpoint with every hardening directive in force, reload on SIGHUP, and be restarted by
systemd after a crash.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Builds
from deb_support import DEBS_MOUNT, Container, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

UNIT = "cybernetic-gateway.service"
METRICS = "http://127.0.0.1:9464/metrics"
FETCH = (
    "import sys, urllib.request; "
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


@pytest.fixture
def device(rootfs: Path, debs: Builds, tmp_path: Path) -> Iterator[Container]:
    """A booted container with the package installed, as on a fresh device."""
    binds = {debs.folder: DEBS_MOUNT}
    with Container(rootfs, tmp_path / "container", binds=binds) as box:
        install = box.sh("dpkg", "-i", f"{DEBS_MOUNT}/{debs.old.name}", check=False)
        assert install.returncode == 0, (
            f"dpkg -i failed:\n{install.stdout}\n{install.stderr}\n{box.journal(UNIT)}"
        )
        yield box


def status_of(pid: str, box: Container) -> dict[str, str]:
    text = box.sh("cat", f"/proc/{pid}/status").stdout
    return dict(re.findall(r"^(\w+):\s*(.*)$", text, re.MULTILINE))


def test_gateway_runs_hardened_and_is_restarted_after_a_crash(device: Container) -> None:
    box = device

    def details() -> str:
        return box.journal(UNIT) + box.journal("mosquitto.service")

    # READY: dpkg's `systemctl start` returned once the daemon sent READY=1
    assert box.show(UNIT, "ActiveState") == "active", details()
    assert box.show(UNIT, "SubState") == "running", details()
    assert box.show(UNIT, "StatusText").startswith("ingest up"), details()
    assert box.show(UNIT, "UnitFileState") == "enabled"
    # the device's broker runs the shipped configuration (the drop-in)
    assert "/etc/cybernetic/mosquitto.conf" in box.show("mosquitto.service", "ExecStart")
    assert box.show("mosquitto.service", "ActiveState") == "active"

    # metrics answer inside the container's own network namespace
    metrics = box.sh("python3", "-c", FETCH, METRICS).stdout
    assert "cybernetic_outbox_rows" in metrics

    # the hardening is in force on the real process
    pid = box.show(UNIT, "MainPID")
    proc = status_of(pid, box)
    uid = box.sh("id", "-u", "cybernetic").stdout.strip()
    assert proc["Uid"].split()[0] == uid
    assert proc["NoNewPrivs"] == "1"
    assert int(proc["CapBnd"], 16) == 0
    assert int(proc["CapEff"], 16) == 0
    assert proc["Seccomp"] == "2"
    assert box.show(UNIT, "WatchdogUSec") == "30s"

    # SIGHUP reloads in place
    box.sh("systemctl", "reload", UNIT)
    assert box.show(UNIT, "MainPID") == pid
    assert box.show(UNIT, "ActiveState") == "active", details()

    # a crash: systemd restarts the daemon, which comes back READY
    box.sh("kill", "-KILL", pid)
    wait_for(
        "systemd to restart the gateway",
        lambda: (
            box.show(UNIT, "NRestarts") == "1"
            and box.show(UNIT, "ActiveState") == "active"
            and box.show(UNIT, "MainPID") not in ("0", pid)
        ),
        60,
        details,
    )
    assert box.show(UNIT, "StatusText").startswith("ingest up"), details()
    assert "cybernetic_outbox_rows" in box.sh("python3", "-c", FETCH, METRICS).stdout

    # a hung event loop: the daemon's watchdog pings stop and systemd kills and restarts it
    # (a 2 s period through a drop-in, so the test waits seconds, not the shipped 30 s)
    dropin = box.root / "etc/systemd/system/cybernetic-gateway.service.d/watchdog.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nWatchdogSec=2s\n")
    box.sh("systemctl", "daemon-reload")
    box.sh("systemctl", "restart", UNIT)
    pings: set[str] = set()

    def pinged_three_times() -> bool:
        pings.add(box.show(UNIT, "WatchdogTimestampMonotonic"))
        return len(pings) >= 3

    wait_for("three watchdog pings", pinged_three_times, 15, details)
    restarts, pid = int(box.show(UNIT, "NRestarts")), box.show(UNIT, "MainPID")
    box.sh("kill", "-STOP", pid)
    wait_for(
        "the watchdog to restart the hung gateway",
        lambda: (
            int(box.show(UNIT, "NRestarts")) == restarts + 1
            and box.show(UNIT, "ActiveState") == "active"
        ),
        60,
        details,
    )
    assert "Failed with result 'watchdog'" in box.journal(UNIT)

    # a clean stop is a staged shutdown, not a kill
    box.sh("systemctl", "stop", UNIT)
    assert box.show(UNIT, "Result") == "success", details()
    assert box.show(UNIT, "ExecMainStatus") == "0", details()


def test_a_device_reading_reaches_the_cloud_tier(device: Container) -> None:
    """Both hardened units on one host, set up as install.md says: a reading goes through."""
    box = device

    def details() -> str:
        units = (UNIT, "cybernetic-cloud.service", "mosquitto.service")
        return "\n".join(box.journal(u) for u in units)

    # broker accounts for the cloud tier and a device, the link secret enrolled on the cloud
    passwd = "/etc/cybernetic/mosquitto/passwd"
    box.sh("mosquitto_passwd", "-b", passwd, "cloud", "cloud-secret")
    devices = "/etc/cybernetic/mosquitto/devices.passwd"
    box.sh("mosquitto_passwd", "-b", devices, "sensor-1", "sensor-secret")
    box.sh("sh", "-c", "printf cloud-secret > /etc/cybernetic/secrets/cloud-broker.password")
    box.sh(
        "install",
        "-o",
        "root",
        "-g",
        "cybernetic",
        "-m",
        "0640",
        "/etc/cybernetic/secrets/link.secret",
        "/etc/cybernetic/links/gw-1",
    )
    box.sh("systemctl", "restart", "mosquitto.service")
    # the uplink goes to this host's broker: a drop-in, as an operator would write it
    dropin = box.root / "etc/systemd/system/cybernetic-gateway.service.d/uplink.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text(
        "[Service]\n"
        "Environment=CYBERNETIC__UPLINK__BROKER__HOST=127.0.0.1\n"
        "Environment=CYBERNETIC__UPLINK__BROKER__PORT=1883\n"
        "Environment=CYBERNETIC__UPLINK__BROKER__USERNAME=gateway\n"
        "Environment=CYBERNETIC__UPLINK__BROKER__PASSWORD_FILE="
        "/etc/cybernetic/secrets/local-broker.password\n"
    )
    box.sh("systemctl", "daemon-reload")
    box.sh("systemctl", "enable", "--now", "cybernetic-cloud.service")
    box.sh("systemctl", "restart", UNIT)
    assert box.show("cybernetic-cloud.service", "ActiveState") == "active", details()
    wait_for(
        "the uplink to connect",
        lambda: "uplink up" in box.show(UNIT, "StatusText"),
        30,
        details,
    )

    publish = (
        "import paho.mqtt.publish as p; p.single('devices/sensor-1/telemetry', "
        "'{\"seq\": 1, \"t\": 21.5}', qos=1, hostname='127.0.0.1', port=1883, "
        "auth={'username': 'sensor-1', 'password': 'sensor-secret'})"
    )
    # a device account does not log in on the loopback service listener (1883)
    python = "/opt/cybernetic-edge/bin/python"
    assert box.sh(python, "-c", publish, check=False).returncode != 0
    # a device on the network: TLS on 8883, trusting the gateway's device CA, its password
    for seq in (1, 2):
        over_tls = (
            "import paho.mqtt.publish as p; p.single('devices/sensor-1/telemetry', "
            f"'{{\"seq\": {seq}, \"t\": 21.6}}', qos=1, hostname='127.0.0.1', port=8883, "
            "auth={'username': 'sensor-1', 'password': 'sensor-secret'}, "
            "tls={'ca_certs': '/etc/cybernetic/mosquitto/tls/devices-ca.pem'})"
        )
        box.sh(python, "-c", over_tls)

    def stored() -> float:
        text = box.sh("python3", "-c", FETCH, "http://127.0.0.1:9465/metrics").stdout
        match = re.search(r"^cybernetic_cloud_stored_readings_total (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    wait_for("both readings in the cloud store", lambda: stored() == 2.0, 30, details)
