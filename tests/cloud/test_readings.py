"""The cloud reading store: group commit of several batches, duplicates dropped by identity."""

from __future__ import annotations

from pathlib import Path

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
        assert results == [(10, 0), (5, 0), (5, 5)]
        assert await store.store("gw1", _readings("dev-a", range(1, 16)), [], 6000) == (0, 15)
    finally:
        await store.close()
    assert count_readings(tmp_path / "r.db") == 20
