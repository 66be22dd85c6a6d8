"""Smoke test of `cybernetic bench envelope`: tiny sizes, fields present and sane (not targets)."""

from __future__ import annotations

import json

import pytest

from cybernetic.__main__ import main


def test_bench_envelope_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "envelope", "--json", "--readings", "5", "--envelopes", "20", "--runs", "1"]
    args += ["--replay-checks", "2000", "--nonces", "5000"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    for field in (
        "ed25519_verify_per_s",
        "raw_ed25519_verify_per_s",
        "ratio_ed25519",
        "hmac_verify_per_s",
        "raw_hmac_per_s",
        "ratio_hmac",
        "replay_checks_per_s",
    ):
        assert result[field] > 0, field
    assert isinstance(result["replay_memory_mb"], float)
    assert result["false_rejects"] == 0
