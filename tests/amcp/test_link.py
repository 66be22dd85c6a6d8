"""A gateway-cloud link: envelopes both ways, and a renewed link secret taking over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amcp.link import CloudLinks, GatewayLink, secrets_in_dir
from amcp.wire import SourceMismatchError, UnknownKeyError
from amcp.wire.telemetry import BatchAck, TelemetryBatch

UP = "cybernetic/gw/gw-1/telemetry"
DOWN = "cybernetic/gw/gw-1/ack"


def _pair(tmp_path: Path) -> tuple[GatewayLink, CloudLinks, Path]:
    links = tmp_path / "links"
    links.mkdir()
    secret = os.urandom(32)
    (links / "gw-1").write_text(secret.hex())
    gw = GatewayLink("gw-1", secret, None)
    cloud = CloudLinks(secrets_in_dir(links), None)
    return gw, cloud, links


def test_envelopes_travel_both_ways(tmp_path: Path) -> None:
    gw, cloud, _ = _pair(tmp_path)
    up = cloud.open("gw-1", gw.seal(TelemetryBatch("b1", "gw-1", []), UP), UP)
    assert up.message == TelemetryBatch("b1", "gw-1", [])
    down = gw.open(cloud.seal("gw-1", BatchAck("b1", 0), DOWN), DOWN)
    assert down.message == BatchAck("b1", 0)


def test_a_gateway_cannot_speak_for_another(tmp_path: Path) -> None:
    gw, cloud, links = _pair(tmp_path)
    (links / "gw-2").write_text(os.urandom(32).hex())
    topic = "cybernetic/gw/gw-2/telemetry"
    with pytest.raises((SourceMismatchError, UnknownKeyError)):
        cloud.open("gw-2", gw.seal(TelemetryBatch("b1", "gw-1", []), topic), topic)


def test_a_renewed_link_secret_takes_over_without_losing_messages(tmp_path: Path) -> None:
    gw, cloud, links = _pair(tmp_path)
    in_flight = cloud.seal("gw-1", BatchAck("old", 0), DOWN)  # sent before the renewal
    renewed = os.urandom(32)
    (links / "gw-1").write_text(renewed.hex())  # what the cloud's enrolment writes
    gw.rekey(renewed)
    # the cloud follows the gateway's first envelope under the new key
    assert cloud.open("gw-1", gw.seal(TelemetryBatch("b2", "gw-1", []), UP), UP).message
    assert gw.open(cloud.seal("gw-1", BatchAck("b2", 0), DOWN), DOWN).message == BatchAck("b2", 0)
    # an ack sealed under the old key before the switch still opens (overlap)
    assert gw.open(in_flight, DOWN).message == BatchAck("old", 0)


def test_an_unknown_key_without_a_renewal_is_still_refused(tmp_path: Path) -> None:
    _, cloud, _ = _pair(tmp_path)
    stranger = GatewayLink("gw-1", os.urandom(32), None)
    with pytest.raises(UnknownKeyError):
        cloud.open("gw-1", stranger.seal(TelemetryBatch("b", "gw-1", []), UP), UP)


def test_a_revoked_gateway_is_refused_by_a_running_cloud(tmp_path: Path) -> None:
    gw, cloud, links = _pair(tmp_path)
    cloud.recheck_s = 0.0  # look the secret up again on every envelope
    assert cloud.open("gw-1", gw.seal(TelemetryBatch("b1", "gw-1", []), UP), UP)
    (links / "gw-1").unlink()  # what `cybernetic pki revoke gw-1` does to its link secret
    with pytest.raises(UnknownKeyError):
        cloud.open("gw-1", gw.seal(TelemetryBatch("b2", "gw-1", []), UP), UP)
