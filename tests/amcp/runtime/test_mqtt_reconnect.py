"""The shared reconnect step: a lost connection backs off, anything else propagates."""

from __future__ import annotations

import aiomqtt
import pytest

from amcp.runtime.mqtt import Backoff, connection_lost, pause_after_loss

FAST = Backoff(0.001, 0.001)


async def test_a_lost_connection_backs_off_and_returns() -> None:
    await pause_after_loss(aiomqtt.MqttError("gone"), FAST, "test")
    # a TaskGroup reports it as a group of MqttErrors: still just a lost connection
    group = ExceptionGroup(
        "tg", [aiomqtt.MqttError("a"), ExceptionGroup("b", [aiomqtt.MqttError("c")])]
    )
    await pause_after_loss(group, FAST, "test")
    assert isinstance(connection_lost(group), aiomqtt.MqttError)


async def test_a_real_failure_beside_a_lost_connection_propagates() -> None:
    group = ExceptionGroup("tg", [aiomqtt.MqttError("a"), ValueError("bug")])
    assert connection_lost(group) is None
    with pytest.raises(ExceptionGroup) as err:
        await pause_after_loss(group, FAST, "test")
    assert err.value is group
