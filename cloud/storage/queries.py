"""The read queries the API and console will use, the same SQL on both engines (no daemon serves
them yet: the API is a later issue; tests/cloud/storage runs them on both engines).

Each is a function of a :class:`~cloud.storage.engine.Tx` (run it with ``engine.read``), with
keyset pagination: a page ends with the key of its last row, and the next page starts after it
(``OFFSET`` would rescan every earlier page). Their plans on PostgreSQL are in docs/scale.md.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import msgspec

from cloud.storage.engine import Tx

Resolution = Literal["minute", "hour"]
MAX_PAGE = 10_000


class ReadingRow(msgspec.Struct, frozen=True):
    device: str
    boot: str
    seq: int
    ts_ms: int
    gateway: str
    values: dict[str, Any]


class RollupRow(msgspec.Struct, frozen=True):
    device: str
    metric: str
    bucket_ms: int
    n: int
    mean: float
    low: float
    high: float


class LatestRow(msgspec.Struct, frozen=True):
    device: str
    gateway: str
    ts_ms: int
    seq: int
    values: dict[str, Any]


class FleetCounts(msgspec.Struct, frozen=True):
    gateways: int
    active_gateways: int
    """Gateways with a batch stored in the last ``active_s`` seconds."""
    devices: int
    readings: int
    """Readings stored since the store began (retention does not lower it)."""
    events_last_hour: int


def _values(raw: object) -> dict[str, Any]:
    """A values column as a dict (text on SQLite, already decoded jsonb on PostgreSQL)."""
    if isinstance(raw, str | bytes):
        decoded = json.loads(raw)
        return decoded if isinstance(decoded, dict) else {"value": decoded}
    return raw if isinstance(raw, dict) else {"value": raw}


def _page(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    return limit


def readings(
    tx: Tx,
    device: str,
    start_ms: int,
    end_ms: int,
    *,
    limit: int = 1000,
    after: tuple[int, str, int] | None = None,
    metric: str | None = None,
) -> list[ReadingRow]:
    """A device's raw readings with ``start_ms <= ts_ms < end_ms``, oldest first; ``after``:
    the (ts_ms, boot, seq) of the previous page's last row. ``metric``: only rows that carry
    it, with only that value."""
    sql = (
        'SELECT device, boot, seq, ts_ms, gateway, "values" FROM readings '
        "WHERE device = ? AND ts_ms >= ? AND ts_ms < ?"
    )
    params: list[object] = [device, start_ms, end_ms]
    if after is not None:
        sql += " AND (ts_ms, boot, seq) > (?, ?, ?)"
        params.extend(after)
    sql += " ORDER BY ts_ms, boot, seq LIMIT ?"
    params.append(_page(limit))
    rows = []
    for dev, boot, seq, ts_ms, gateway, raw in tx.execute(sql, params):
        values = _values(raw)
        if metric is not None:
            if metric not in values:
                continue
            values = {metric: values[metric]}
        rows.append(ReadingRow(dev, boot, int(seq), int(ts_ms), gateway, values))
    return rows


def rollups(
    tx: Tx,
    device: str,
    start_ms: int,
    end_ms: int,
    *,
    resolution: Resolution = "minute",
    metric: str | None = None,
    limit: int = 1000,
    after: tuple[str, int] | None = None,
) -> list[RollupRow]:
    """A device's rollups by metric, then time; ``after``: the previous page's last
    (metric, bucket_ms)."""
    table = {"minute": "rollup_minute", "hour": "rollup_hour"}[resolution]
    sql = (
        f"SELECT device, metric, bucket_ms, n, total, low, high FROM {table} "  # noqa: S608 - a fixed name
        "WHERE device = ? AND bucket_ms >= ? AND bucket_ms < ?"
    )
    params: list[object] = [device, start_ms, end_ms]
    if metric is not None:
        sql += " AND metric = ?"
        params.append(metric)
    if after is not None:
        sql += " AND (metric, bucket_ms) > (?, ?)"
        params.extend(after)
    sql += " ORDER BY metric, bucket_ms LIMIT ?"
    params.append(_page(limit))
    return [
        RollupRow(d, m, int(b), int(n), float(t) / int(n), float(lo), float(hi))
        for d, m, b, n, t, lo, hi in tx.execute(sql, params)
    ]


def latest(
    tx: Tx, *, gateway: str | None = None, limit: int = 1000, after: str | None = None
) -> list[LatestRow]:
    """Each device's newest reading (by device id; ``after``: the previous page's last)."""
    sql = 'SELECT device, gateway, ts_ms, seq, "values" FROM devices WHERE 1 = 1'
    params: list[object] = []
    if gateway is not None:
        sql += " AND gateway = ?"
        params.append(gateway)
    if after is not None:
        sql += " AND device > ?"
        params.append(after)
    sql += " ORDER BY device LIMIT ?"
    params.append(_page(limit))
    return [
        LatestRow(d, g, int(ts), int(seq), _values(raw))
        for d, g, ts, seq, raw in tx.execute(sql, params)
    ]


def fleet_counts(tx: Tx, now_ms: int, *, active_s: float = 300.0) -> FleetCounts:
    since = now_ms - int(active_s * 1000)
    gateways, active, total = tx.execute(
        "SELECT count(*), coalesce(sum(CASE WHEN last_batch_ms >= ? THEN 1 ELSE 0 END), 0), "
        "coalesce(sum(readings), 0) FROM gateways",
        (since,),
    )[0]
    devices = tx.execute("SELECT count(*) FROM devices")[0][0]
    events = tx.execute("SELECT count(*) FROM events WHERE ts_ms >= ?", (now_ms - 3_600_000,))[0][0]
    return FleetCounts(int(gateways), int(active), int(devices), int(total), int(events))
