"""Smoke test of `cybernetic bench store`: tiny sizes, fields present and sane (not targets)."""

from __future__ import annotations

import json

import pytest

from cybernetic.__main__ import main


def test_bench_store_prints_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "store",
        "--json",
        "--sites",
        "3",
        "--rows",
        "50",
        "--batch",
        "20",
        "--runs",
        "1",
    ]
    code = main(argv)
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for field in ("local_writes_per_s", "merge_rows_per_s", "raw_upsert_rows_per_s"):
        assert result[field] > 0
    assert result["merge_ratio"] == pytest.approx(
        result["merge_rows_per_s"] / result["raw_upsert_rows_per_s"], rel=0.01
    )
    assert result["rows"] == 150
