"""`cybernetic bench rules --json` runs with tiny sizes and reports sane fields (not targets)."""

from __future__ import annotations

import json

import pytest

from cybernetic.__main__ import main


def test_rules_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "rules", "--json", "--rules", "60", "--events", "400", "--runs", "1"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for name in (
        "single_rule_events_per_s",
        "handwritten_events_per_s",
        "single_ratio",
        "events_per_s",
        "naive_events_per_s",
        "speedup",
        "swap_ms",
        "windowed_events_per_s",
    ):
        assert out[name] > 0, name
    assert out["rules"] == 60
    assert 0 <= out["matches_per_event"] < 60
