"""The ingest benchmark runs end to end and reports its contract fields (not its targets)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_ingest_reports_its_fields() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cybernetic",
            "bench",
            "ingest",
            "--json",
            "--messages",
            "600",
            "--devices",
            "3",
            "--runs",
            "1",
            "--live-seconds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result = json.loads(out.stdout)
    for field in (
        "messages",
        "raw_msgs_per_s",
        "gateway_msgs_per_s",
        "ratio",
        "lost",
        "duplicates",
        "p50_ms",
        "p99_ms",
        "gateway_rss_mb",
    ):
        assert field in result, field
    assert result["messages"] == 600
    assert result["lost"] == 0
    assert result["raw_msgs_per_s"] > 0
    assert result["gateway_msgs_per_s"] > 0
    assert 0 < result["gateway_rss_mb"] < 500
