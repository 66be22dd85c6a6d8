"""The shared reconnect step: a lost connection backs off, anything else propagates."""

from __future__ import annotations

import asyncio

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


async def test_a_cancellation_the_sessions_taskgroup_swallowed_still_ends_the_loop() -> None:
    """Python 3.11: cancelled while its children fail, a TaskGroup raises their errors, not
    CancelledError; the reconnect loop must not take that for a lost connection and go on."""

    async def session() -> None:
        async def link() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                raise aiomqtt.MqttError("connection lost during teardown") from None

        async with asyncio.TaskGroup() as tg:
            tg.create_task(link())
            await asyncio.sleep(10)

    async def reconnect_loop() -> None:
        while True:
            try:
                await session()
            except (aiomqtt.MqttError, ExceptionGroup) as caught:
                await pause_after_loss(caught, FAST, "test")

    task = asyncio.create_task(reconnect_loop())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait({task}, timeout=2)
    assert task.cancelled()
