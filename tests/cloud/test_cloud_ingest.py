"""Cloud ingest on a real broker: forged and malformed batches are refused with their reason,
and never hold back the good batches committed beside them (group commit)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiomqtt
import msgspec

from amcp.crypto import derive_link_keys
from amcp.link import GatewayLink, read_secret
from amcp.wire import Sealer
from amcp.wire.telemetry import BatchAck, BatchNack, Reading, TelemetryBatch
from cybernetic.stack import Stack, scrape


def _batch(batch_id: str, gateway: str, seqs: range) -> TelemetryBatch:
    readings = [Reading("dev-1", "b1", s, 1000 + s, {"v": float(s)}, 2000 + s) for s in seqs]
    return TelemetryBatch(batch_id=batch_id, gateway=gateway, readings=readings)


async def test_bad_batches_are_refused_and_the_good_ones_beside_them_commit(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path / "s")
    try:
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        gw = stack.gateway_id
        topic, ack_topic = f"cybernetic/gw/{gw}/telemetry", f"cybernetic/gw/{gw}/ack"
        link = GatewayLink(gw, read_secret(tmp_path / "s/secrets/link"), None)
        forger = GatewayLink(gw, os.urandom(32), None)  # right names, wrong key
        sent = [
            b"\x00not an envelope",
            forger.seal(_batch("forged", gw, range(100, 110)), topic),
            link.seal(_batch("not-mine", "another-gateway", range(200, 210)), topic),
            link.seal(_batch("good-1", gw, range(1, 11)), topic),
            link.seal(_batch("good-2", gw, range(11, 21)), topic),
            link.seal(_batch("good-1", gw, range(1, 11)), topic),  # a retry: all duplicates
        ]
        password = (tmp_path / "s/secrets/cloud-gateway").read_text()
        acks: list[BatchAck] = []
        async with aiomqtt.Client(
            stack.cloud_broker.host, stack.cloud_broker.port, username="gateway", password=password
        ) as client:
            await client.subscribe(ack_topic, qos=1)
            for payload in sent:  # back to back: they land in one or a few group commits
                await client.publish(topic, payload, qos=1)
            async with asyncio.timeout(15):
                async for message in client.messages:
                    ack = link.open(bytes(message.payload), ack_topic).message  # type: ignore[arg-type]
                    assert isinstance(ack, BatchAck)
                    acks.append(ack)
                    if len(acks) == 3:
                        break
        assert [(a.batch_id, a.stored, a.duplicates) for a in acks] == [
            ("good-1", 10, 0),
            ("good-2", 10, 0),
            ("good-1", 0, 10),
        ]
        assert stack.cloud_count() == 20
        metrics = scrape(stack.cloud_metrics)
        prefix = "cybernetic_cloud_refused_envelopes_total:reason="
        refused = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        # not an envelope at all; a key this cloud does not hold for the gateway
        assert refused == {"malformed": 1, "unknown_key": 1}
        assert metrics["cybernetic_cloud_malformed_batches_total"] == 1  # another gateway's
        assert stack.cloud_proc is not None
        assert stack.cloud_proc.poll() is None
    finally:
        await asyncio.to_thread(stack.close)


class _BadBatch(msgspec.Struct, tag="telemetry.batch"):
    """Authentic but undecodable: the right kind, readings of the wrong type."""

    batch_id: str
    gateway: str
    readings: str


async def test_validly_signed_hostile_batches_never_stop_cloud_ingest(tmp_path: Path) -> None:
    """Issue 16, finding 6: batches signed with the gateway's real key whose content the store
    cannot hold (seq or ts of 2**64-1, a msgpack extension value, NaN, integers past 2**63-1)
    used to crash cloud ingest, six in 30 s stopping the cloud for every gateway. Now the unstorable
    readings are listed in the ack (the gateway dead-letters them) and the rest of each batch
    commits; a stale batch (queued while the cloud was away) is nacked for a fresh re-send; an
    undecodable one is nacked for good; and the good batches after them all commit."""
    stack = Stack(tmp_path / "s")
    try:
        stack.start_brokers()
        stack.start_cloud()
        await asyncio.to_thread(stack.wait_cloud_ready)
        gw = stack.gateway_id
        topic, ack_topic = f"cybernetic/gw/{gw}/telemetry", f"cybernetic/gw/{gw}/ack"
        secret = read_secret(tmp_path / "s/secrets/link")
        link = GatewayLink(gw, secret, None)
        old = Sealer(derive_link_keys(secret, gateway=gw, cloud="cloud").up, clock=_Past())

        def hostile(i: int, bad: Reading) -> TelemetryBatch:
            good = Reading("dev-1", "h", 1000 + i, 1, {"v": 1.0}, 1)
            return TelemetryBatch(batch_id=f"h{i}", gateway=gw, readings=[good, bad])

        bad_readings = [
            Reading("dev-1", "h", 2**64 - 1, 1, {"v": 1}, 1),
            Reading("dev-1", "h", 7, 2**64 - 1, {"v": 1}, 1),
            Reading("dev-1", "h", 8, 1, {"v": msgspec.msgpack.Ext(3, b"x")}, 1),
            Reading("dev-1", "h", 9, 1, {"v": float("nan")}, 1),
            Reading("dev-1", "h", 10, 1, {"v": {"deep": [2**64 - 1]}}, 1),
            Reading("dev-1", "h", 11, 1, {"v": 2**63}, 1),
        ]
        sent = [link.seal(hostile(i, r), topic) for i, r in enumerate(bad_readings)]
        sent += [
            old.seal(_batch("stale", gw, range(50, 55)), topic),
            link.seal(_BadBatch("undecodable", gw, "nope"), topic),  # type: ignore[arg-type]
            link.seal(_batch("good-1", gw, range(1, 11)), topic),
        ]
        password = (tmp_path / "s/secrets/cloud-gateway").read_text()
        replies: dict[str, BatchAck | BatchNack] = {}
        async with aiomqtt.Client(
            stack.cloud_broker.host, stack.cloud_broker.port, username="gateway", password=password
        ) as client:
            await client.subscribe(ack_topic, qos=1)
            for payload in sent:
                await client.publish(topic, payload, qos=1)
            async with asyncio.timeout(20):
                async for message in client.messages:
                    reply = link.open(bytes(message.payload), ack_topic).message  # type: ignore[arg-type]
                    assert isinstance(reply, BatchAck | BatchNack)
                    replies[reply.batch_id] = reply
                    if len(replies) == len(sent):
                        break
        for i in range(len(bad_readings)):
            ack = replies[f"h{i}"]
            assert isinstance(ack, BatchAck)
            assert (ack.stored, list(ack.refused)) == (1, [1]), ack
        assert "seq" in replies["h0"].refused[1]  # type: ignore[union-attr]
        assert "values.v.deep[0]" in replies["h4"].refused[1]  # type: ignore[union-attr]
        stale, undecodable = replies["stale"], replies["undecodable"]
        assert isinstance(stale, BatchNack)
        assert (stale.reason, stale.retry) == ("stale", True)
        assert isinstance(undecodable, BatchNack)
        assert (undecodable.reason, undecodable.retry) == ("malformed", False)
        assert replies["good-1"] == BatchAck("good-1", stored=10)
        assert stack.cloud_count() == 10 + len(bad_readings)
        metrics = scrape(stack.cloud_metrics)
        assert metrics["cybernetic_cloud_refused_readings_total"] == len(bad_readings)
        assert stack.cloud_proc is not None
        assert stack.cloud_proc.poll() is None, stack.log("cloud")[-3000:]
        assert "Traceback" not in stack.log("cloud")
    finally:
        await asyncio.to_thread(stack.close)


class _Past:
    """A clock ten minutes behind: envelopes it stamps are outside the cloud's window."""

    def time(self) -> float:
        return time.time() - 600
