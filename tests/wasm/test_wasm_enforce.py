"""Enforcement at ingest: the example policy against a small live-like batch."""

from __future__ import annotations

from pathlib import Path

import wasm
from amcp.wire.telemetry import Reading

POLICY = Path(__file__).parents[2] / "examples" / "policies" / "cold-chain.policy"
NOON = 1_764_072_000_000  # 2025-11-25 12:00 UTC


def _r(device: str, seq: int, **values: object) -> Reading:
    return Reading(device=device, boot="b", seq=seq, ts_ms=NOON + seq, values=dict(values),
                   received_ms=NOON + seq + 10)  # fmt: skip


def test_enforce_splits_a_batch_by_decision() -> None:
    agent = wasm.PolicyAgent.load(wasm.compile_policy_file(POLICY), zones={"fridge": "cold-store"})
    batch = [
        _r("fridge", 1, temp_c=4.0, humidity=50),
        _r("fridge", 2, temp_c=9.5, humidity=50),
        _r("fridge", 3, temp_c=400.0, humidity=50),
        _r("legacy-7", 4, temp_c=212.0, humidity=40),
    ]
    result = wasm.enforce(agent, batch)
    assert [r.seq for r in result.kept] == [1, 2, 4]
    assert [(r.seq, d.rule) for r, d in result.flagged] == [(2, "warm_cold_store")]
    assert [(r.seq, d.reason) for r, d in result.denied] == [
        (3, "value outside the sensor's physical range")
    ]
    assert result.transformed == 1
    assert result.kept[2].values == {"temp_c": 100.0, "humidity": 40}
    assert result.kept[2].seq == 4
