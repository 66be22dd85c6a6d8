"""Every client from make_client sends small packets at once (TCP_NODELAY).

paho leaves Nagle's algorithm on; a PUBACK or a short batch written behind unacknowledged data
then waits for the peer's delayed ACK (up to 40 ms on Linux) on every hop.
"""

from __future__ import annotations

import socket

from amcp.runtime.mqtt import make_client
from amcp.runtime.settings import BrokerLink
from cybernetic.mosquitto import MosquittoBroker


async def test_client_sockets_have_nagle_off_and_still_work(
    broker: MosquittoBroker, topic: str
) -> None:
    link = BrokerLink(port=broker.port, username="gateway", password="gateway-test-secret")
    client = make_client(link, f"{topic}-nodelay", clean_session=True)
    async with client:
        sock = client._client.socket()  # the socket paho opened
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        await client.subscribe(f"{topic}/x", qos=1)  # aiomqtt's own socket hook still runs
        await client.publish(f"{topic}/x", b"hello", qos=1)
        async for message in client.messages:
            assert message.payload == b"hello"
            break


def test_the_shipped_broker_configuration_turns_nagle_off(broker: MosquittoBroker) -> None:
    assert "set_tcp_nodelay true" in broker.conf_file.read_text()
