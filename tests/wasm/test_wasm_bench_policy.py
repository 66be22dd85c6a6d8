"""Smoke test of `cybernetic bench policy`: tiny sizes, fields present and sane (not targets)."""

from __future__ import annotations

import json

import pytest

from cybernetic.__main__ import main


def test_bench_policy_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "policy",
            "--json",
            "--batch",
            "64",
            "--batches",
            "3",
            "--samples",
            "200",
            "--runs",
            "1",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for field in (
        "decisions_per_s", "decision_p50_us", "decision_p99_us", "raw_call_p99_us",
        "generic_call_p99_us", "overhead_ratio", "compile_ms",
    ):  # fmt: skip
        assert result[field] > 0, field
    assert result["decision_p50_us"] <= result["decision_p99_us"]
    assert result["overhead_ratio"] == pytest.approx(
        result["decision_p99_us"] / result["raw_call_p99_us"], rel=0.01
    )
    assert result["runaway_stop_ms"] > 0
    assert result["runaway_fuel"] > 0
    assert result["nonce_python_ns"] > 0
