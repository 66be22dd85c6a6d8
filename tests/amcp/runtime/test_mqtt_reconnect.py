"""The aiomqtt boundary: every aiomqtt error becomes a lost or a refused link, and only a
group of lost links counts as a lost link (anything beside one is a real failure)."""

from __future__ import annotations

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from amcp.runtime.mqtt import link_error
from amcp.runtime.session import LinkLostError, LinkRefusedError, only_link_errors


def test_a_refused_login_is_a_refused_link() -> None:
    for code in (4, 5):  # MQTT 3.1.1: bad credentials, not authorised
        mapped = link_error(MqttConnectError(code))
        assert isinstance(mapped, LinkRefusedError)
        assert mapped.code == code


def test_other_errors_are_lost_links() -> None:
    for exc in (
        aiomqtt.MqttError("Operation timed out"),
        MqttConnectError(3),  # server unavailable: try again
        aiomqtt.MqttCodeError(7, "Unexpected disconnection"),
    ):
        mapped = link_error(exc)
        assert type(mapped) is LinkLostError
        assert str(mapped)


def test_only_a_group_of_lost_links_is_a_lost_link() -> None:
    lost = ExceptionGroup("tg", [LinkLostError("a"), ExceptionGroup("b", [LinkLostError("c")])])
    assert only_link_errors(lost)
    assert only_link_errors(LinkRefusedError("no"))
    assert not only_link_errors(ExceptionGroup("tg", [LinkLostError("a"), ValueError("bug")]))
    assert not only_link_errors(ValueError("bug"))
