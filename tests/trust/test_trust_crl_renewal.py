"""The fleet CRL re-signed on schedule by the cloud daemon (cloud.crl, docs/trust.md "CRL
renewal"): real CA files and real signatures, then the real daemon in front of a real
mutual-TLS broker, where an expired CRL refuses every gateway and the renewal lets it back in."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import msgspec
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from amcp.crypto.pki import FleetCA
from amcp.runtime.mqtt import make_client
from amcp.runtime.settings import BrokerLink
from cloud.config import CloudConfig, CrlSettings, EnrolmentSettings
from cloud.crl import WARN_EVERY_S, CrlRenewer, crl_child_specs
from cybernetic.devices import publish_readings
from cybernetic.stack import Stack, scrape
from gateway.enrol import EnrolPaths

DAY = 86400.0


class Clock:
    """Wall-clock time that a test moves by hand (certificate dates stay real)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    """A CA that issued three gateway certificates and revoked two of them."""
    ca = FleetCA(tmp_path / "ca")
    ca.init()
    for gw in ("gw-1", "gw-2", "gw-3"):
        ca.issue_server([gw], valid_s=3600)
    ca.revoke("gw-1")
    ca.revoke("gw-3")
    return ca


def _revoked(crl: x509.CertificateRevocationList | None) -> dict[int, dt.datetime]:
    assert crl is not None
    return {e.serial_number: e.revocation_date_utc for e in crl}


def _next_update(crl: x509.CertificateRevocationList | None) -> float:
    assert crl is not None
    assert crl.next_update_utc is not None
    return crl.next_update_utc.timestamp()


_REGISTRIES: dict[int, CollectorRegistry] = {}


def _renewer(ca: FleetCA, clock: Clock | None = None, **settings: object) -> CrlRenewer:
    conf = msgspec.convert({"valid_s": 3 * DAY, "renew_before_s": DAY, **settings}, CrlSettings)
    registry = CollectorRegistry()
    renewer = CrlRenewer(ca, conf, registry, clock=clock or time.time)
    _REGISTRIES[id(renewer)] = registry
    return renewer


def _value(renewer: CrlRenewer, name: str, **labels: str) -> float:
    value = _REGISTRIES[id(renewer)].get_sample_value(name, labels)
    assert value is not None, name
    return float(value)


def test_a_crl_close_to_its_next_update_is_resigned_with_the_same_revoked_serials(
    ca: FleetCA,
) -> None:
    ca.write_crl(validity=dt.timedelta(hours=12))  # less than renew_before_s (1 day) left
    old = ca.crl()
    assert len(_revoked(old)) == 2
    renewer = _renewer(ca)
    result = renewer.check()
    new = ca.crl()  # parsed and its signature checked against the root
    assert result.renewed
    assert _next_update(new) > _next_update(old) + 2 * DAY
    assert result.next_update == _next_update(new)
    assert _revoked(new) == _revoked(old)
    assert stat.S_IMODE(ca.crl_path.stat().st_mode) == 0o600
    assert not list(ca.directory.glob(".crl.pem-*"))  # written through a temporary, renamed
    assert _value(renewer, "cybernetic_pki_crl_renewals_total", result="ok") == 1


def test_a_fresh_crl_is_left_alone(ca: FleetCA) -> None:
    before = ca.crl_path.read_bytes()  # from revoke(): the default 30 days
    renewer = _renewer(ca, valid_s=30 * DAY, renew_before_s=10 * DAY)
    for _ in range(3):
        assert not renewer.check().renewed
    assert ca.crl_path.read_bytes() == before
    assert _value(renewer, "cybernetic_pki_crl_renewals_total", result="ok") == 0


def test_renewal_never_drops_a_serial_the_old_crl_listed(ca: FleetCA) -> None:
    """A serial the register does not know as revoked (a restored or edited issued.json)
    stays revoked: a scheduled re-signing must never let a certificate back in."""
    ca.write_crl(validity=dt.timedelta(hours=1))
    listed = _revoked(ca.crl())
    issued = ca.issued_path.read_bytes()
    ca.issue_server(["gw-4"], valid_s=3600)
    ca.revoke("gw-4")
    ca.write_crl(validity=dt.timedelta(hours=1))
    with_gw4 = _revoked(ca.crl())
    assert len(with_gw4) == len(listed) + 1
    ca.issued_path.write_bytes(issued)  # the register forgets gw-4 was ever issued
    assert _renewer(ca).check().renewed
    assert _revoked(ca.crl()) == with_gw4


def test_a_missing_or_foreign_crl_is_replaced(ca: FleetCA, tmp_path: Path) -> None:
    other = FleetCA(tmp_path / "other")
    other.init()
    ca.crl_path.write_bytes(other.crl_path.read_bytes())  # signed by another root
    assert ca.crl() is None
    renewer = _renewer(ca)
    assert renewer.check().renewed
    assert len(_revoked(ca.crl())) == 2
    ca.crl_path.unlink()
    assert renewer.check().renewed
    assert len(_revoked(ca.crl())) == 2


def test_the_metrics_report_the_seconds_left(tmp_path: Path) -> None:
    ca = FleetCA(tmp_path / "ca")
    ca.init(valid_days=400)
    clock = Clock()
    renewer = _renewer(ca, clock, valid_s=2 * DAY, renew_before_s=DAY / 2)
    crl_s = "cybernetic_pki_crl_next_update_seconds"
    ca_s = "cybernetic_pki_ca_expiry_seconds"
    assert _value(renewer, crl_s) != _value(renewer, crl_s)  # NaN before the first check
    renewer.check()  # the 30-day CRL from init() is fresh
    root_end = ca.certificate().not_valid_after_utc.timestamp()
    assert _value(renewer, crl_s) == pytest.approx(_next_update(ca.crl()) - clock.now)
    assert _value(renewer, crl_s) == pytest.approx(30 * DAY, abs=5)
    assert _value(renewer, ca_s) == pytest.approx(root_end - clock.now)
    assert _value(renewer, ca_s) == pytest.approx(400 * DAY, abs=5)
    clock.now += 3600.0  # computed at each scrape, not frozen at the last check
    assert _value(renewer, crl_s) == pytest.approx(30 * DAY - 3600, abs=5)
    assert _value(renewer, ca_s) == pytest.approx(400 * DAY - 3600, abs=5)
    clock.now = _next_update(ca.crl()) + DAY  # no check for a month: the CRL expired
    assert _value(renewer, crl_s) == pytest.approx(-DAY)


def _warnings(caplog: pytest.LogCaptureFixture, start: str) -> int:
    return sum(
        r.name == "cloud.crl" and r.levelno == logging.WARNING and r.getMessage().startswith(start)
        for r in caplog.records
    )


def test_the_warnings_fire_once_a_day_not_per_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloud.crl")
    ca = FleetCA(tmp_path / "ca")
    ca.init(valid_days=60)  # inside the root's 90-day margin
    clock = Clock()
    # CRLs valid 3 days, inside the 7-day margin: as when every renewal keeps failing
    renewer = _renewer(ca, clock, valid_s=3 * DAY, renew_before_s=DAY)
    crl_msg, ca_msg = "fleet CRL expires soon", "fleet root certificate expires soon"
    renewer.check()  # the 30-day CRL from init() is fresh and outside the margin
    assert _warnings(caplog, crl_msg) == 0
    assert _warnings(caplog, ca_msg) == 1
    ca.write_crl(validity=dt.timedelta(days=2))
    for _ in range(5):  # a check every 5 minutes
        renewer.check()
        clock.now += 300.0
    assert _warnings(caplog, crl_msg) == 1
    assert _warnings(caplog, ca_msg) == 1
    clock.now += WARN_EVERY_S  # a day later, still close: once more
    renewer.check()
    renewer.check()
    assert _warnings(caplog, crl_msg) == 2
    assert _warnings(caplog, ca_msg) == 2
    record = next(r for r in caplog.records if r.getMessage().startswith(crl_msg))
    assert record.__dict__["next_update"].endswith("Z")
    # with margins the fleet is far from, nothing is said
    caplog.clear()
    quiet = _renewer(ca, clock, warn_before_s=DAY / 2, ca_warn_before_s=30 * DAY)
    quiet.check()
    assert _warnings(caplog, "fleet") == 0


def test_a_failed_renewal_is_logged_counted_and_retried(
    ca: FleetCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca.write_crl(validity=dt.timedelta(hours=1))
    old = ca.crl_path.read_bytes()
    key = ca.key_path.read_bytes()
    ca.key_path.unlink()  # the root key is away (a wrong pki_dir, a restore under way)
    renewer = _renewer(ca, broker_pid_file=str(tmp_path / "no-such.pid"))
    result = renewer.check()  # does not raise: the daemon goes on
    assert not result.renewed
    assert ca.crl_path.read_bytes() == old
    assert result.next_update == _next_update(ca.crl())
    assert _value(renewer, "cybernetic_pki_crl_renewals_total", result="failed") == 1
    assert "could not be re-signed" in caplog.text
    ca.key_path.write_bytes(key)
    assert renewer.check().renewed  # the next check succeeds
    assert "could not signal the broker" in caplog.text  # no pid file: said, not raised


def test_settings_refuse_a_renewal_margin_as_long_as_the_validity() -> None:
    with pytest.raises(msgspec.ValidationError, match="renew_before_s"):
        msgspec.convert(
            {"enrolment": {"crl": {"valid_s": 3600, "renew_before_s": 3600}}}, CloudConfig
        )
    defaults = CrlSettings()
    assert defaults.renew_before_s == pytest.approx(defaults.valid_s / 3)
    assert crl_child_specs(EnrolmentSettings(), CollectorRegistry()) == []
    specs = crl_child_specs(EnrolmentSettings(pki_dir="/nonexistent"), CollectorRegistry())
    assert [s.name for s in specs] == ["crl"]


# -- end to end: the cloud daemon, a mutual-TLS broker, a gateway ------------------------------


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    pid_file = tmp_path / "stack" / "cloud-broker.pid"
    crl = {"valid_s": 6.0, "renew_before_s": 4.0, "check_every_s": 0.5}
    s = Stack(
        tmp_path / "stack",
        tls=True,
        cloud={"enrolment": {"crl": {**crl, "broker_pid_file": str(pid_file)}}},
    )
    yield s
    s.close()


async def _gateway_can_connect(stack: Stack) -> bool:
    base = BrokerLink(host=stack.cloud_broker.host, port=stack.cloud_broker.tls_port or 0)
    try:
        async with make_client(
            EnrolPaths(stack.enrol_dir).tls_link(base), "probe", clean_session=True, timeout=3
        ):
            return True
    except aiomqtt.MqttError:
        return False


def _renewals(stack: Stack) -> float:
    return scrape(stack.cloud_metrics, 0.5).get("cybernetic_pki_crl_renewals_total:result=ok", 0)


async def _wait_renewals(stack: Stack, count: float) -> None:
    """Until the daemon has re-signed the CRL ``count`` times (20 s at most)."""
    deadline = time.monotonic() + 20.0
    while await asyncio.to_thread(_renewals, stack) < count:
        assert time.monotonic() < deadline, stack.log("cloud")[-3000:]
        await asyncio.sleep(0.2)


async def test_after_the_daemon_renews_an_expired_crl_the_gateway_connects_again(
    stack: Stack,
) -> None:
    pw = stack.add_device("dev-1")
    await asyncio.to_thread(stack.start_brokers)  # enrols the gateway
    ca = FleetCA(stack.pki_dir / "ca")
    assert await _gateway_can_connect(stack)
    # what the issue found: once the CRL's next update is past, OpenSSL refuses the gateway
    ca.write_crl(validity=dt.timedelta(seconds=1))
    stack.cloud_broker.reload()
    await asyncio.sleep(2.2)
    assert not await _gateway_can_connect(stack)
    expired = _next_update(ca.crl())
    # the cloud daemon re-signs it at start and SIGHUPs the broker named by broker_pid_file
    (stack.state / "cloud-broker.pid").write_text(f"{stack.cloud_broker.pid}\n")
    await asyncio.to_thread(stack.start_cloud)
    await asyncio.to_thread(stack.wait_cloud_ready)
    await _wait_renewals(stack, 1)
    await asyncio.sleep(0.3)  # mosquitto reloads between loop iterations
    assert _next_update(ca.crl()) > expired
    assert await _gateway_can_connect(stack)
    await asyncio.to_thread(stack.start_gateway)
    await asyncio.to_thread(stack.wait_gateway_ready)
    await publish_readings(stack.edge.host, stack.device_port, "dev-1", pw, range(1, 101))
    assert await asyncio.to_thread(stack.wait_cloud_count, 100, 60) == 100
    # outlive that CRL: the daemon keeps re-signing (6 s each, renewed with < 4 s left), so
    # a reconnect after the first renewed CRL's next update still succeeds
    first_renewed = _next_update(ca.crl())
    await _wait_renewals(stack, _renewals(stack) + 2)
    await asyncio.sleep(max(0.0, first_renewed + 1.3 - time.time()))
    await asyncio.to_thread(stack.kick_gateway)  # the gateway must reconnect over TLS
    await publish_readings(stack.edge.host, stack.device_port, "dev-1", pw, range(101, 201))
    assert await asyncio.to_thread(stack.wait_cloud_count, 200, 60) == 200
    assert await _gateway_can_connect(stack)
    metrics = scrape(stack.cloud_metrics)
    assert 0 < metrics["cybernetic_pki_crl_next_update_seconds"] <= 6
    assert metrics["cybernetic_pki_ca_expiry_seconds"] > 3000 * DAY
    assert metrics.get("cybernetic_pki_crl_renewals_total:result=failed") == 0
    assert "fleet CRL re-signed" in stack.log("cloud")
