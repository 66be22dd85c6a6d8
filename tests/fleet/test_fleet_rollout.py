"""The fleet playbooks on real hosts: a cloud and three gateways (booted Debian containers on
one private network), reached by Ansible over SSH.

One test, in the order an operator lives it (each phase builds on the one before):
site.yml installs, configures and enrols everything against the real cloud; the dynamic
inventory lists the fleet from the cloud's table; telemetry flows from a device through a
gateway to the cloud; a second site.yml run changes nothing; rollout.yml upgrades in batches
of one, where a deliberately broken package on the second gateway is caught by the health
check (its heartbeats never reach the cloud) and rolled back, and the third gateway is never
touched; pre-flight refusals (a backlog over the limit, a package whose SHA-256 is not the
inventory's) change nothing; the fixed rollout upgrades the rest, and running it again
changes nothing. No token or password shows in any output or journal.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from fleet_support import ANSIBLE, Fleet, FleetHost, FleetPackages, PlaybookRun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CLOUD_STATUS = "http://127.0.0.1:9465/status"
CLOUD_METRICS = "http://127.0.0.1:9465/metrics"
GATEWAY_UNIT = "cybernetic-gateway.service"
PY = "/opt/cybernetic-edge/bin/python"
# fast heartbeats and a short health wait keep the broken gateway's detection quick
TEST_VARS = {"gateway_heartbeat_interval": 1.0, "gateway_health_timeout_s": 20}


def _journals(fleet: Fleet) -> str:
    units = ("cybernetic-cloud.service", "mosquitto.service")
    parts = [f"--- cloud-1 {u}\n{fleet.cloud.journal(u)}" for u in units]
    parts += [
        f"--- {n} {GATEWAY_UNIT}\n{h.journal(GATEWAY_UNIT)}" for n, h in fleet.gateways.items()
    ]
    return "\n".join(parts)


def _ok(run: PlaybookRun, what: str, fleet: Fleet) -> None:
    if run.rc != 0:
        pytest.fail(f"{what} exited {run.rc}:\n{run.output[-8000:]}\n{_journals(fleet)[-12000:]}")


def _fleet_table(fleet: Fleet) -> dict[str, dict[str, object]]:
    status = fleet.cloud.http_json(CLOUD_STATUS)
    gateways: dict[str, dict[str, object]] = status["fleet"]["gateways"]
    return gateways


def _wait(what: str, probe: object, timeout: float, details: object) -> None:
    deadline = time.monotonic() + timeout
    while not probe():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:.0f}s\n{details()}")  # type: ignore[operator]
        time.sleep(0.5)


def _stored(fleet: Fleet) -> float:
    text = fleet.cloud.http_text(CLOUD_METRICS)
    match = re.search(r"^cybernetic_cloud_stored_readings_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _unit(host: FleetHost, prop: str) -> str:
    return host.box.show(GATEWAY_UNIT, prop)


def test_fleet_install_enrol_rollout_rollback(fleet: Fleet, packages: FleetPackages) -> None:
    first, second, broken = packages.first, packages.second, packages.broken
    gw1, gw2, gw3 = (fleet.gateways[n] for n in ("gw-1", "gw-2", "gw-3"))
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started - sum(timings.values()), 1)

    # -- site.yml: from fresh hosts to an enrolled fleet -------------------------------------
    inventory = fleet.write_inventory({"all": (first.path, first.sha256)}, **TEST_VARS)
    site = fleet.playbook("site.yml", inventory)
    _ok(site, "site.yml", fleet)
    lap("site.yml")
    for host in fleet.hosts:
        assert host.package_version() == first.version, host.name
    table = _fleet_table(fleet)
    assert sorted(table) == ["gw-1", "gw-2", "gw-3"], table
    assert {row["state"] for row in table.values()} == {"alive"}, table
    enrolled = fleet.cloud.sh(
        "cybernetic", "pki", "--dir", "/var/lib/cybernetic/cloud/pki", "list"
    ).stdout
    for name in ("gw-1", "gw-2", "gw-3"):
        assert re.search(rf"^  {name}  active", enrolled, re.MULTILINE), enrolled
        config = (gw1 if name == "gw-1" else fleet.gateways[name]).box.path(
            "/etc/cybernetic/gateway.toml"
        )
        text = config.read_text()
        assert f'id = "{name}"' in text
        assert f'host = "{fleet.cloud.address}"' in text
        assert "port = 8883" in text
    assert 'zone = "zone-a"' in gw1.box.path("/etc/cybernetic/gateway.toml").read_text()
    assert 'zone = "zone-b"' in gw3.box.path("/etc/cybernetic/gateway.toml").read_text()
    # hardened as packaged: the gateway runs as its own user with no capabilities
    pid = _unit(gw1, "MainPID")
    status = gw1.sh("cat", f"/proc/{pid}/status").stdout
    assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE), status

    # the dynamic inventory lists the fleet from the cloud's table (run on the cloud host,
    # where its /status listens)
    script = fleet.cloud.box.path("/root/fleet_inventory.py")
    script.write_bytes((ANSIBLE / "fleet_inventory.py").read_bytes())
    listed = json.loads(
        fleet.cloud.sh(
            "env",
            "CYBERNETIC_FLEET_HOST_PATTERN={id}.fleet.test",
            "python3",
            "/root/fleet_inventory.py",
            "--list",
        ).stdout
    )
    assert listed["cybernetic_gateways"]["hosts"] == ["gw-1", "gw-2", "gw-3"], listed
    assert listed["fleet_alive"]["hosts"] == ["gw-1", "gw-2", "gw-3"], listed
    assert listed["_meta"]["hostvars"]["gw-2"]["ansible_host"] == "gw-2.fleet.test"

    # -- telemetry: a device on gw-1 -> the cloud's store -----------------------------------
    added = gw1.sh("cybernetic", "devices", "add", "sensor-1").stdout
    password = re.search(r"password \(shown once[^:]*\): (\S+)", added)
    assert password, added
    gw1.sh("systemctl", "reload", "mosquitto.service")
    before = _stored(fleet)
    for seq in (1, 2, 3):
        gw1.sh(
            PY,
            "-c",
            "import paho.mqtt.publish as p; p.single('devices/sensor-1/telemetry', "
            f"'{{\"seq\": {seq}, \"t\": 21.5}}', qos=1, hostname='127.0.0.1', port=8883, "
            f"auth={{'username': 'sensor-1', 'password': '{password.group(1)}'}}, "
            "tls={'ca_certs': '/etc/cybernetic/mosquitto/tls/devices-ca.pem'})",
        )
    _wait(
        "the readings in the cloud's store",
        lambda: _stored(fleet) >= before + 3,
        30,
        lambda: gw1.journal(GATEWAY_UNIT) + fleet.cloud.journal("cybernetic-cloud.service"),
    )
    lap("telemetry")

    # -- a second site.yml run changes nothing ----------------------------------------------
    again = fleet.playbook("site.yml", inventory)
    _ok(again, "the second site.yml", fleet)
    everyone = dict.fromkeys(("cloud-1", "gw-1", "gw-2", "gw-3"), 0)
    assert again.changed() == everyone, again.output[-6000:]
    lap("site.yml again")

    # -- rollout.yml: gw-2 gets a broken build ----------------------------------------------
    gw3_pid, gw3_since = _unit(gw3, "MainPID"), _unit(gw3, "ActiveEnterTimestampMonotonic")
    gw2_config = gw2.box.path("/etc/cybernetic/gateway.toml").read_text()
    inventory = fleet.write_inventory(
        {"all": (second.path, second.sha256), "gw-2": (broken.path, broken.sha256)},
        **TEST_VARS,
    )
    rollout = fleet.playbook("rollout.yml", inventory)
    assert rollout.rc != 0, f"a rollout with a broken gateway succeeded:\n{rollout.output}"
    lap("rollout with a broken build")
    assert gw1.package_version() == second.version
    # gw-2: detected by the heartbeat check, rolled back to its package and configuration
    assert "Wait for the gateway's heartbeats to reach the cloud" in rollout.output
    assert gw2.package_version() == first.version, rollout.output[-6000:]
    assert gw2.box.path("/etc/cybernetic/gateway.toml").read_text() == gw2_config
    assert _unit(gw2, "ActiveState") == "active"
    _wait(
        "the rolled-back gw-2 alive in the fleet table",
        lambda: _fleet_table(fleet)["gw-2"]["state"] == "alive",
        30,
        lambda: gw2.journal(GATEWAY_UNIT),
    )
    # gw-3: never touched (same process, nothing copied, still the first version)
    assert gw3.package_version() == first.version
    assert (_unit(gw3, "MainPID"), _unit(gw3, "ActiveEnterTimestampMonotonic")) == (
        gw3_pid,
        gw3_since,
    )
    assert not gw3.box.path(f"/var/cache/cybernetic-edge/packages/{second.path.name}").exists()
    assert "gw-3" not in rollout.recap, rollout.recap
    # the summary says what happened where
    assert f"gw-1: upgraded {first.version} -> {second.version}" in rollout.output
    assert f"gw-2: rolled back to {first.version} after {broken.version} failed" in rollout.output
    assert "gw-3: not touched" in rollout.output

    # -- pre-flight refusals change nothing: a backlog that would not survive, a bad package
    refused = fleet.playbook(
        "rollout.yml", inventory, "--limit", "gw-3", "-e", "gateway_preflight_max_outbox_rows=-1"
    )
    assert refused.rc != 0, refused.output[-6000:]
    assert "backlog would not survive" in refused.output
    assert f"gw-3: refused by the pre-flight checks at {first.version}" in refused.output
    inventory = fleet.write_inventory(
        {"all": (second.path, second.sha256), "gw-3": (second.path, "0" * 64)}, **TEST_VARS
    )
    tampered = fleet.playbook("rollout.yml", inventory, "--limit", "gw-3")
    assert tampered.rc != 0, tampered.output[-6000:]
    assert f"the inventory says {'0' * 64}: not installed" in tampered.output
    assert "gw-3: refused by the pre-flight checks" in tampered.output
    assert gw3.package_version() == first.version
    assert (_unit(gw3, "MainPID"), _unit(gw3, "ActiveEnterTimestampMonotonic")) == (
        gw3_pid,
        gw3_since,
    )
    assert not gw3.box.path(f"/var/cache/cybernetic-edge/packages/{second.path.name}").exists()
    lap("pre-flight refusals")

    # -- the fixed rollout upgrades the rest; running it again changes nothing -------------
    inventory = fleet.write_inventory({"all": (second.path, second.sha256)}, **TEST_VARS)
    fixed = fleet.playbook("rollout.yml", inventory)
    _ok(fixed, "the fixed rollout", fleet)
    for gw in (gw1, gw2, gw3):
        assert gw.package_version() == second.version, gw.name
    assert "gw-1: unchanged at" in fixed.output
    assert f"gw-3: upgraded {first.version} -> {second.version}" in fixed.output
    lap("fixed rollout")
    idle = fleet.playbook("rollout.yml", inventory)
    _ok(idle, "the rollout again", fleet)
    assert idle.changed() == dict.fromkeys(("gw-1", "gw-2", "gw-3"), 0), idle.output[-6000:]
    lap("rollout again")

    # -- no secret in any output or journal -------------------------------------------------
    enrol_password = fleet.cloud.sh("cat", "/etc/cybernetic/secrets/enrol.password").stdout
    assert len(enrol_password) >= 20
    for run in (site, again, rollout, refused, tampered, fixed, idle):
        assert "cet1." not in run.output
        assert enrol_password not in run.output
    for host in fleet.hosts:
        journal = host.sh("journalctl", "--no-pager", "-o", "cat").stdout
        assert "cet1." not in journal, host.name
        assert enrol_password not in journal, host.name
    print(f"fleet phases (s): {timings}")
