"""Smoke test of `cybernetic bench sync`: tiny sizes, fields present and sane (not targets)."""

from __future__ import annotations

import argparse

from cybernetic.bench import sync


def test_sync_bench_reports_its_fields() -> None:
    result = sync.run(argparse.Namespace(keys=5, overwrites=20, runs=1))
    # pycrdt's size varies a little with its random client ids
    reference = result["pycrdt_catchup_bytes"]
    assert isinstance(reference, int)
    assert abs(reference - sync.pycrdt_catchup(5, 20)) < reference // 10
    catchup = result["catchup_bytes"]
    assert isinstance(catchup, int)
    assert catchup > 0
    assert result["bytes_ratio"] == round(reference / catchup, 1)
    one = result["one_key_delta_bytes"]
    assert isinstance(one, int)
    assert 0 < one < result["one_key_frame_bytes"] < result["one_key_envelope_bytes"]  # type: ignore[operator]
    converge = result["converge_ms"]
    assert isinstance(converge, float)
    assert converge > 0
