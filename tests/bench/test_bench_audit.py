"""The audit benchmark runs end to end, small, and reports its contract fields (not its
targets: those are judged at full size): a verified log with no problems."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_audit_reports_its_fields() -> None:
    args = ["bench", "audit", "--json", "--entries", "5000", "--appends", "2000", "--runs", "1"]
    out = subprocess.run(
        [sys.executable, "-m", "cybernetic", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout)
    for name in (
        "appends_per_s",
        "pg_appends_per_s",
        "raw_insert_per_s",
        "proof_verify_per_s",
        "gateway_chain_appends_per_s",
        "gateway_single_appends_per_s",
        "bare_hash_chains_per_s",
        "gateway_raw_appends_per_s",
        "proof_ratio",
        "gateway_chain_ratio",
    ):
        assert result[name] > 0, name
    assert result["raw_scan_hash_s"] >= 0
    assert result["verified_entries"] == 5000
    assert result["verify_problems"] == 0
    assert isinstance(result["verify_full_log_s"], float)
    assert isinstance(result["meets_targets"], bool)
