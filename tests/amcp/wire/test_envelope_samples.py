"""Frozen envelopes of every message kind, committed as hex: later versions must still read them.

The bytes in ``envelope_samples.json`` were produced once by ``_generate`` below and must never be
regenerated to make a test pass: if they stop opening, the wire format broke compatibility.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from amcp.crypto import Ed25519Signer, HmacSigner, Keyring
from amcp.replay import ReplayGuard
from amcp.wire import (
    AlgedonicSignal,
    BatchAck,
    BatchNack,
    CapabilityAnnouncement,
    Command,
    Event,
    Heartbeat,
    Intent,
    IntentUpdate,
    Message,
    Opener,
    PolicyBundle,
    Reading,
    Sealer,
    SyncFrame,
    TelemetryBatch,
)
from amcp.wire.messages import MESSAGE_TYPES, kind_of
from tests.amcp.wire.envelope_support import SetClock

DATA = Path(__file__).with_name("envelope_samples.json")
ED_SEED = bytes(range(32))
HMAC_SECRET = bytes(range(100, 132))
TOPIC = "amcp/v1/gw-sample/up"

SAMPLES: list[Message] = [
    TelemetryBatch(
        batch_id="b-1",
        gateway="gw-sample",
        readings=[
            Reading(device="d1", boot="boot-a", seq=7, ts_ms=1_700_000_000_123, values={"t": 21.5}),
            Reading(
                device="d2",
                boot="boot-b",
                seq=1,
                ts_ms=1_700_000_000_456,
                values={"on": True, "mode": "eco"},
                received_ms=1_700_000_000_500,
            ),
        ],
    ),
    BatchAck(batch_id="b-1", stored=2, duplicates=1),
    Event(
        name="rule.match", ts_ms=1_700_000_001_000, attrs={"rule": "overheat"}, severity="warning"
    ),
    AlgedonicSignal(
        valence="pain", intensity=0.9, origin="s1/gw-sample/pump-3", reason="dry run", ts_ms=1
    ),
    Command(command_id="c-1", target="valve-2", action="open", args={"pct": 40}, deadline_ms=99),
    Intent(intent_id="i-1", text="open valve 2", capability="valve.open", args={"id": 2}),
    IntentUpdate(intent_id="i-1", state="failed", data={"step": 3}, error="timeout"),
    CapabilityAnnouncement(node="gw-sample", version=4, capabilities=["valve.open", "temp.read"]),
    PolicyBundle(name="rate", version=2, expires_ms=1_800_000_000_000, body=b"\x00asm\x01"),
    Heartbeat(node="gw-sample", seq=42, ts_ms=1_700_000_002_000, uptime_s=12.5),
    SyncFrame(stream="lww/capabilities", data=b"\x01\x02\x03"),
    BatchNack(batch_id="b-2", reason="stale", retry=True, detail="queued while away"),
]


def _signers() -> tuple[Ed25519Signer, HmacSigner]:
    ed = Ed25519Signer("gw-sample", Ed25519PrivateKey.from_private_bytes(ED_SEED), created_ms=1)
    return ed, HmacSigner("gw-sample", HMAC_SECRET, created_ms=1)


def _generate() -> None:  # pragma: no cover - run by hand once per new kind
    ed, hm = _signers()
    clock = SetClock(1_700_000_000.0)
    rows = []
    for i, message in enumerate(SAMPLES):
        signer = hm if isinstance(message, TelemetryBatch | BatchAck | BatchNack) else ed
        sealer = Sealer(signer, zone="zone-a", clock=clock)
        rows.append({"kind": kind_of(message), "hex": sealer.seal(message, TOPIC).hex()})
        clock.now += 1 + i
    DATA.write_text(json.dumps({"topic": TOPIC, "samples": rows}, indent=1) + "\n")


def test_every_kind_has_a_frozen_sample() -> None:
    stored = {row["kind"] for row in json.loads(DATA.read_text())["samples"]}
    assert stored == {t.__struct_config__.tag for t in MESSAGE_TYPES}


def test_frozen_samples_still_open_to_the_same_messages() -> None:
    data = json.loads(DATA.read_text())
    ed, hm = _signers()
    expected = {kind_of(m): m for m in SAMPLES}
    for row in data["samples"]:
        raw = bytes.fromhex(row["hex"])
        from amcp.wire.envelope import decode_frame  # noqa: PLC0415

        _, header = decode_frame(raw)
        clock = SetClock(header.ts_ms / 1000)
        opener = Opener(Keyring([ed.entry(), hm.entry()]), ReplayGuard(None), clock)
        opened = opener.open(raw, data["topic"])
        assert opened is not None
        assert opened.message == expected[row["kind"]]
        assert opened.header.zone == "zone-a"
        assert opened.header.traceparent is not None


if __name__ == "__main__":  # pragma: no cover
    _generate()
