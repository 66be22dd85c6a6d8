"""`cybernetic bench llm` runs small and reports its contract fields (its targets are the
benchmark's to judge, at full size)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_llm_reports_its_fields() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cybernetic",
            "bench",
            "llm",
            "--json",
            "--runs",
            "10",
            "--decisions",
            "400",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    for name in (
        "engine_stream_ms_p50",
        "raw_stream_ms_p50",
        "first_token_ms_engine",
        "first_token_ms_raw",
        "planner_decisions_per_s",
        "planner_engine_decisions_per_s",
    ):
        assert result[name] > 0, name
    assert isinstance(result["engine_overhead_ms_p50"], float)
    assert result["engine_vs_raw_ratio"] > 0
    assert isinstance(result["targets_met"], bool)
    assert "streams:" in out.stderr  # progress on stderr, the JSON alone on stdout
