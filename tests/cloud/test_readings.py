"""The cloud reading store: group commit of several batches, duplicates dropped by identity."""

from __future__ import annotations

from pathlib import Path

import msgspec

from amcp.wire.telemetry import EventRecord, Reading
from cloud.readings import ReadingStore, StoreBatch, count_readings


def _readings(device: str, seqs: range) -> list[Reading]:
    return [Reading(device, "b1", s, 1000 + s, {"v": float(s)}, 2000 + s) for s in seqs]


async def test_store_many_commits_batches_together_and_counts_each(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "r.db")
    await store.open()
    try:
        event = EventRecord("rule.overheat", 1234, "dev-a", "warning", {"t": 91.0})
        results = await store.store_many(
            [
                StoreBatch("gw1", _readings("dev-a", range(1, 11)), [event]),
                StoreBatch("gw2", _readings("dev-b", range(1, 6)), []),
                # a re-sent batch in the same group: its readings are the duplicates
                StoreBatch("gw1", _readings("dev-a", range(6, 16)), []),
            ],
            now_ms=5000,
        )
        assert [(r.stored, r.duplicates, r.events) for r in results] == [
            (10, 0, 1),
            (5, 0, 0),
            (5, 5, 0),
        ]
        assert await store.store("gw1", _readings("dev-a", range(1, 16)), [], 6000) == (0, 15)
    finally:
        await store.close()
    assert count_readings(tmp_path / "r.db") == 20


async def test_unstorable_readings_are_refused_by_index_and_the_rest_stored(
    tmp_path: Path,
) -> None:
    """Validly signed but unstorable content (seq or ts beyond 63 bits, msgpack extension
    values, NaN, integers beyond 64 bits) is left out and reported; the batch's other
    readings commit, and the store keeps working."""
    store = ReadingStore(tmp_path / "r.db")
    await store.open()
    try:
        good = _readings("dev-a", range(1, 4))
        bad = [
            Reading("dev-a", "b1", 2**64 - 1, 1, {"v": 1}, 1),
            Reading("dev-a", "b1", 10, 2**64 - 1, {"v": 1}, 1),
            Reading("dev-a", "b1", 11, 1, {"v": msgspec.msgpack.Ext(5, b"x")}, 1),
            Reading("dev-a", "b1", 12, 1, {"v": float("nan")}, 1),
            Reading("dev-a", "b1", 13, 1, {"v": [2**70]}, 1),
        ]
        events = [EventRecord("e", 1, "s", attrs={"x": float("inf")}), EventRecord("e", 1, "s")]
        (result,) = await store.store_many(
            [StoreBatch("gw1", [good[0], *bad, *good[1:]], events)], now_ms=5000
        )
        assert result.stored == 3
        assert sorted(result.refused) == [1, 2, 3, 4, 5]
        assert "seq" in result.refused[1]
        assert "values.v" in result.refused[4]
        assert result.refused_events.keys() == {0}
        assert result.events == 1
        # the store is still usable
        assert await store.store("gw1", _readings("dev-b", range(1, 3)), [], 6000) == (2, 0)
    finally:
        await store.close()
    assert count_readings(tmp_path / "r.db") == 5
