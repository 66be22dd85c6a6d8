"""The cloud benchmark runs end to end, small, on both engines, and reports its contract fields
(not its targets: those are the benchmark's to judge, at its full size)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_cloud_reports_its_fields_and_loses_nothing() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cybernetic",
            "bench",
            "cloud",
            "--json",
            "--messages",
            "20000",
            "--batch",
            "250",
            "--runs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=True,
    )
    result = json.loads(out.stdout)
    for prefix in ("", "sqlite_"):
        for name in ("rows_per_s", "raw_copy_rows_per_s", "rows_per_s_2_workers"):
            assert result[prefix + name] > 0, prefix + name
        for name in ("ratio", "scale_2_over_1"):
            assert isinstance(result[prefix + name], float), prefix + name
        assert result[prefix + "lost"] == 0
        assert result[prefix + "duplicates"] == 0
    assert isinstance(result["meets_targets"], bool)
