"""Enforcement at ingest: the example policy against a small live-like batch."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import wasmtime

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


def test_policy_stage_counts_swaps_and_applies_fail_mode(tmp_path: Path) -> None:
    config = msgspec.json.decode(
        b'{"file": "cold-chain.policy", "zones": {"fridge": "cold-store"}}', type=wasm.PolicyConfig
    )
    stage = wasm.PolicyStage.from_config(config, base=POLICY.parent)
    batch = [_r("fridge", 1, temp_c=4.0), _r("fridge", 2, temp_c=9.5), _r("x", 3, temp_c=900.0)]
    assert [r.seq for r in stage(batch)] == [1, 2]
    assert stage.counts == wasm.StageCounts(allowed=1, flagged=1, denied=1)

    spin = wasm.compile_policy("rule a when true then deny").wat.replace(
        "(block $done", "(loop $spin (br $spin))(block $done", 1
    )
    stage.swap(wasm.PolicyAgent.load(bytes(wasmtime.wat2wasm(spin))))
    assert stage(batch) == batch  # fail-open by default: the batch is kept unchecked
    stage.on_fault = "drop"
    assert stage(batch) == []
    assert stage.counts.faults == 2


def test_policy_config_refuses_unknown_fields() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown"):
        msgspec.json.decode(b'{"file": "p.policy", "zone": {}}', type=wasm.PolicyConfig)
