"""The control benchmark runs end to end, small, and reports its contract fields and types
(not its targets: those are the benchmark's to judge, at its full size)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_control_reports_its_fields() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cybernetic",
            "bench",
            "control",
            "--json",
            "--pushes",
            "10",
            "--backlog",
            "2000",
            "--runs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result = json.loads(out.stdout)
    assert (result["pushes"], result["backlog"], result["runs"]) == (10, 2000, 1)
    for name in (
        "push_to_effect_ms_p50",
        "push_to_effect_ms_p99",
        "push_to_effect_ms_max",
        "bare_round_trip_ms_p50",
        "bare_round_trip_ms_p99",
        "push_ratio_p50",
        "bundle_verify_swap_ms",
        "raw_load_ms",
        "bundle_ratio",
    ):
        assert isinstance(result[name], float), name
        assert result[name] > 0, name
    assert result["push_to_effect_ms_p50"] <= result["push_to_effect_ms_p99"]
    assert result["push_to_effect_ms_p99"] <= result["push_to_effect_ms_max"]
    assert result["push_ratio_p50"] == pytest.approx(
        result["push_to_effect_ms_p50"] / result["bare_round_trip_ms_p50"], rel=0.01
    )
    assert isinstance(result["algedonic_overtakes_backlog"], bool)
    position = result["algedonic_position"]
    assert isinstance(position, int)
    assert 0 <= position <= 2000
    assert result["algedonic_overtakes_backlog"] == (position < 2000)
    assert result["targets_met"] == {
        "push_to_effect_ms_p99": result["push_to_effect_ms_p99"] <= 500,
        "bundle_verify_swap_ms": result["bundle_verify_swap_ms"] <= 50,
        "algedonic_overtakes_backlog": result["algedonic_overtakes_backlog"],
    }
