"""Cloud ingest on a real broker: forged and malformed batches are refused with their reason,
and never hold back the good batches committed beside them (group commit)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiomqtt

from amcp.link import GatewayLink, read_secret
from amcp.wire.telemetry import BatchAck, Reading, TelemetryBatch
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
