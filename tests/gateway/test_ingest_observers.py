"""Ingest in two: filters before the commit, observers after it on exactly the readings
stored, once each, also when the broker redelivers a batch committed before a crash."""

from __future__ import annotations

from pathlib import Path

import msgspec

from amcp.wire.telemetry import Reading
from gateway.config import GatewayConfig
from gateway.ingest import Ingest, _Pending
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox, Overflow


def _config(tmp_path: Path, **outbox: object) -> GatewayConfig:
    secret = tmp_path / "link"
    secret.write_text("00" * 32)
    secret.chmod(0o600)
    return msgspec.convert(
        {
            "gateway": {"id": "gw-obs", "state_dir": str(tmp_path)},
            "uplink": {"link_secret_file": str(secret)},
            "outbox": outbox,
        },
        GatewayConfig,
    )


class _Seen:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def __call__(self, readings: list[Reading]) -> None:
        self.readings.extend(readings)

    @property
    def seqs(self) -> list[int]:
        return [r.seq for r in self.readings]


def _payload(seq: int, **values: object) -> bytes:
    return msgspec.json.encode({"seq": seq, "boot": "b1", "values": values or {"v": seq}})


async def _commit(ingest: Ingest, payloads: list[bytes], device: str = "dev") -> None:
    pending = _Pending()
    for payload in payloads:
        ingest.accept(pending, f"devices/{device}/telemetry", payload)
    await ingest.commit(pending)


async def test_observers_see_only_stored_readings(tmp_path: Path) -> None:
    config = _config(tmp_path)
    outbox = Outbox(tmp_path / "outbox.sqlite3", config.outbox)
    await outbox.open()
    seen = _Seen()

    def drop_odd(readings: list[Reading]) -> list[Reading]:  # a filter, before the commit
        return [r for r in readings if r.seq % 2 == 0]

    ingest = Ingest(
        config.ingest,
        outbox,
        GatewayMetrics(),
        broker=config.local_broker,
        client_id="t-ingest",
        stages=[drop_odd],
        observers=[seen],
    )
    await _commit(ingest, [_payload(s) for s in range(1, 11)] + [b"not a payload"])
    assert seen.seqs == [2, 4, 6, 8, 10]
    assert outbox.snapshot().rows == 5
    await outbox.close()


async def test_observers_never_see_what_the_outbox_refused(tmp_path: Path) -> None:
    one = len(msgspec.msgpack.encode(Reading("dev", "b1", 1, 1, {"v": 1}, 1)))
    config = _config(tmp_path, max_bytes=one * 3, overflow=Overflow.REFUSE_NEW.value)
    outbox = Outbox(tmp_path / "outbox.sqlite3", config.outbox)
    await outbox.open()
    seen = _Seen()
    ingest = Ingest(
        config.ingest,
        outbox,
        GatewayMetrics(),
        broker=config.local_broker,
        client_id="t-ingest",
        observers=[seen],
    )
    await _commit(ingest, [_payload(s) for s in range(1, 7)])
    assert len(seen.readings) == outbox.snapshot().rows
    assert seen.seqs == [1, 2, 3][: outbox.snapshot().rows]
    await outbox.close()


async def test_a_batch_redelivered_after_a_crash_is_observed_and_stored_once(
    tmp_path: Path,
) -> None:
    """The gateway committed a batch and died before the broker had its PUBACKs: after the
    restart the broker sends the same messages again, ahead of new ones."""
    config = _config(tmp_path)
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, config.outbox)
    await outbox.open()
    before = _Seen()
    await _commit(
        Ingest(
            config.ingest,
            outbox,
            GatewayMetrics(),
            broker=config.local_broker,
            client_id="t-ingest",
            observers=[before],
        ),
        [_payload(s) for s in range(1, 11)],
    )
    await outbox.close()  # the crash: the rows are committed, the acks never reached the broker

    outbox = Outbox(path, config.outbox)  # the restarted gateway
    await outbox.open()
    after = _Seen()
    metrics = GatewayMetrics()
    ingest = Ingest(
        config.ingest,
        outbox,
        metrics,
        broker=config.local_broker,
        client_id="t-ingest",
        observers=[after],
    )
    ingest.expect_redelivery()  # what its first connection does
    await _commit(ingest, [_payload(s) for s in range(1, 16)])  # 1-10 again, then 11-15
    assert before.seqs == list(range(1, 11))
    assert after.seqs == list(range(11, 16))
    assert outbox.snapshot().rows == 15
    assert metrics.redelivered._value.get() == 10
    await outbox.close()


async def test_an_observer_that_raises_costs_no_reading(tmp_path: Path) -> None:
    config = _config(tmp_path)
    outbox = Outbox(tmp_path / "outbox.sqlite3", config.outbox)
    await outbox.open()
    seen = _Seen()

    def broken(_readings: list[Reading]) -> None:
        raise RuntimeError("observer bug")

    metrics = GatewayMetrics()
    ingest = Ingest(
        config.ingest,
        outbox,
        metrics,
        broker=config.local_broker,
        client_id="t-ingest",
        observers=[broken, seen],
    )
    await _commit(ingest, [_payload(s) for s in range(1, 4)])
    assert outbox.snapshot().rows == 3
    assert seen.seqs == [1, 2, 3]
    assert metrics.failures.labels("observer")._value.get() == 1
    await outbox.close()
