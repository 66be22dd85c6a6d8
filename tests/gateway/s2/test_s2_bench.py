"""Smoke test of `cybernetic bench limiter --json` with tiny sizes (fields, not targets)."""

from __future__ import annotations

import json

import pytest

from cybernetic.__main__ import main


def test_bench_limiter_prints_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "limiter", "--json", "--keys", "100", "--decisions", "2000"]
    assert main([*argv, "--batch", "100", "--runs", "1"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    for field in (
        "decisions_per_s",
        "dict_baseline_per_s",
        "limiter_ratio",
        "phi_evals_per_s",
        "gate_decisions_per_s",
    ):
        assert result[field] > 0, field
    assert result["limiter_ratio"] == pytest.approx(
        result["decisions_per_s"] / result["dict_baseline_per_s"], rel=0.01
    )
    assert 0 <= result["denied_fraction"] < 1
    assert result["keys"] == 100
    assert "limiter" in out.err  # progress goes to stderr
