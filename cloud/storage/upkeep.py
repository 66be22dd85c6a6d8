"""Rollups and retention: the cloud store's periodic upkeep, one supervised child.

**Rollups.** Each transaction that stores readings marks the (device, minute) pairs it touched
in ``rollup_pending``. A rollup round claims up to ``limit`` marks (deleting them, in its own
transaction), recomputes each minute's per-metric count, sum, minimum and maximum from the raw
readings (numeric top-level values only: booleans, strings and nested objects are not rolled
up), marks the hours those minutes belong to, and recomputes those hours from the minutes.
Recomputing rather than adding makes a round idempotent: a duplicate, a late reading from a
gateway that was offline for days, or a round that died half-way, leaves exact figures.

Why nothing is missed with several cloud workers on PostgreSQL: a store transaction marks with
an upsert that locks the mark, and a round claims with ``DELETE ... RETURNING`` that skips
locked marks; so a round either waits for the readings of an in-flight transaction or leaves
its mark for the next round. Minutes older than the raw retention are never recomputed (their
readings are gone: the rollup is what is kept).

**Retention.** Raw readings and events older than ``raw_days``, minute rollups older than
``minute_days``, hour rollups older than ``hour_days`` (0: kept forever), and nonce-registry
entries older than twice the clock window (envelopes that old are refused as stale anyway)
are deleted in bounded chunks, so a first run over a large table never holds a long lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

import msgspec
from prometheus_client import CollectorRegistry, Counter

from amcp.runtime.supervisor import ChildContext
from cloud.storage.engine import Engine, Tx

log = logging.getLogger(__name__)
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
CHUNK = 5_000


class RetentionSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[storage.retention]``: how long each kind of row is kept (0: forever)."""

    raw_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """Raw readings and events."""
    minute_days: Annotated[float, msgspec.Meta(ge=0)] = 90.0
    hour_days: Annotated[float, msgspec.Meta(ge=0)] = 730.0
    every_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """How often retention runs (also once a minute after start)."""


_CLAIM = {
    "sqlite": (
        "DELETE FROM {table} WHERE (device, bucket_ms) IN (SELECT device, bucket_ms FROM {table} "
        "ORDER BY device, bucket_ms LIMIT ?) RETURNING device, bucket_ms"
    ),
    "postgresql": (
        "DELETE FROM {table} WHERE (device, bucket_ms) IN (SELECT device, bucket_ms FROM {table} "
        "ORDER BY device, bucket_ms LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING device, bucket_ms"
    ),
}
_SET = (
    "ON CONFLICT (device, metric, bucket_ms) DO UPDATE SET n = excluded.n, "
    "total = excluded.total, low = excluded.low, high = excluded.high"
)
_MINUTE = {
    "sqlite": (
        "INSERT INTO rollup_minute (device, metric, bucket_ms, n, total, low, high) "  # noqa: S608 - constants
        "SELECT r.device, j.key, CAST(? AS BIGINT), count(*), sum(j.value), min(j.value), "
        'max(j.value) FROM readings AS r, json_each(r."values") AS j '
        "WHERE r.device = ? AND r.ts_ms >= ? AND r.ts_ms < ? AND j.type IN ('integer', 'real') "
        f"GROUP BY r.device, j.key {_SET}"
    ),
    "postgresql": (
        "INSERT INTO rollup_minute (device, metric, bucket_ms, n, total, low, high) "  # noqa: S608 - constants
        "SELECT r.device, j.key, CAST(? AS BIGINT), count(*), sum(j.value::float8), "
        'min(j.value::float8), max(j.value::float8) FROM readings AS r, jsonb_each(r."values") '
        "AS j WHERE r.device = ? AND r.ts_ms >= ? AND r.ts_ms < ? "
        f"AND jsonb_typeof(j.value) = 'number' GROUP BY r.device, j.key {_SET}"
    ),
}
_HOUR = (
    "INSERT INTO rollup_hour (device, metric, bucket_ms, n, total, low, high) "  # noqa: S608 - constants
    "SELECT device, metric, CAST(? AS BIGINT), sum(n), sum(total), min(low), max(high) "
    "FROM rollup_minute WHERE device = ? AND bucket_ms >= ? AND bucket_ms < ? "
    f"GROUP BY device, metric {_SET}"
)
_MARK_HOUR = (
    "INSERT INTO rollup_pending_hour (device, bucket_ms) VALUES (?, ?) "
    "ON CONFLICT (device, bucket_ms) DO UPDATE SET bucket_ms = excluded.bucket_ms"
)


def rollup_round(tx: Tx, limit: int, raw_cutoff_ms: int) -> tuple[int, int]:
    """One round in one transaction: (minutes, hours) recomputed."""
    claim = _CLAIM[tx.dialect]
    minutes = tx.execute(claim.format(table="rollup_pending"), (limit,))
    hours: set[tuple[str, int]] = set()
    for device, bucket in minutes:
        if bucket + MINUTE_MS <= raw_cutoff_ms:
            continue  # its readings are past retention: keep the rollup as it is
        tx.execute(_MINUTE[tx.dialect], (bucket, device, bucket, bucket + MINUTE_MS))
        hours.add((device, bucket - bucket % HOUR_MS))
    tx.executemany(_MARK_HOUR, sorted(hours))
    claimed = tx.execute(claim.format(table="rollup_pending_hour"), (limit,))
    for device, bucket in claimed:
        tx.execute(_HOUR, (bucket, device, bucket, bucket + HOUR_MS))
    return len(minutes), len(claimed)


_EXPIRE = {
    "readings": (
        "DELETE FROM readings WHERE (device, boot, seq) IN "
        "(SELECT device, boot, seq FROM readings WHERE ts_ms < ? LIMIT ?)"
    ),
    "events": "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts_ms < ? LIMIT ?)",
    "rollup_minute": (
        "DELETE FROM rollup_minute WHERE (device, metric, bucket_ms) IN "
        "(SELECT device, metric, bucket_ms FROM rollup_minute WHERE bucket_ms < ? LIMIT ?)"
    ),
    "rollup_hour": (
        "DELETE FROM rollup_hour WHERE (device, metric, bucket_ms) IN "
        "(SELECT device, metric, bucket_ms FROM rollup_hour WHERE bucket_ms < ? LIMIT ?)"
    ),
    "nonce_registry": (
        "DELETE FROM nonce_registry WHERE (sender, nonce) IN "
        "(SELECT sender, nonce FROM nonce_registry WHERE ts_ms < ? LIMIT ?)"
    ),
}


def cutoffs(settings: RetentionSettings, now_ms: int, window_s: float) -> dict[str, int]:
    """The time before which each table's rows go (tables kept forever are left out)."""
    found: dict[str, int] = {"nonce_registry": now_ms - int(2 * window_s * 1000)}
    for tables, days in (
        (("readings", "events"), settings.raw_days),
        (("rollup_minute",), settings.minute_days),
        (("rollup_hour",), settings.hour_days),
    ):
        if days > 0:
            for table in tables:
                found[table] = now_ms - int(days * DAY_MS)
    return found


def expire_chunk(tx: Tx, table: str, before_ms: int) -> int:
    """Delete up to :data:`CHUNK` of ``table``'s rows older than ``before_ms``."""
    return tx.executemany(_EXPIRE[table], [(before_ms, CHUNK)])


class Upkeep:
    """The child that runs rollup rounds every ``rollup_every_s`` and retention every
    ``retention.every_s`` on the store's engine."""

    def __init__(
        self,
        engine: Engine,
        retention: RetentionSettings,
        *,
        window_s: float,
        rollup_every_s: float = 10.0,
        rollup_limit: int = 2_000,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.engine = engine
        self.retention = retention
        self.window_s = window_s
        self.rollup_every_s = rollup_every_s
        self.rollup_limit = rollup_limit
        self.rolled = Counter(
            "cybernetic_storage_rollups",
            "Rollup buckets recomputed, by resolution",
            ["resolution"],
            registry=registry,
        )
        self.expired = Counter(
            "cybernetic_storage_expired_rows",
            "Rows deleted by retention, by table",
            ["table"],
            registry=registry,
        )

    def raw_cutoff_ms(self, now_ms: int) -> int:
        days = self.retention.raw_days
        return now_ms - int(days * DAY_MS) if days > 0 else 0

    async def rollup(self, now_ms: int | None = None) -> tuple[int, int]:
        """Rounds until nothing is pending; (minutes, hours) recomputed in all."""
        total = [0, 0]
        while True:
            cutoff = self.raw_cutoff_ms(int(time.time() * 1000) if now_ms is None else now_ms)
            minutes, hours = await self.engine.write(
                lambda tx, c=cutoff: rollup_round(tx, self.rollup_limit, c)  # type: ignore[misc]
            )
            self.rolled.labels("minute").inc(minutes)
            self.rolled.labels("hour").inc(hours)
            total[0] += minutes
            total[1] += hours
            if minutes < self.rollup_limit and hours < self.rollup_limit:
                return total[0], total[1]

    async def expire(self, now_ms: int | None = None) -> dict[str, int]:
        """One retention pass; rows deleted by table."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        deleted: dict[str, int] = {}
        for table, before in cutoffs(self.retention, now, self.window_s).items():
            while True:
                n = await self.engine.write(
                    lambda tx, t=table, b=before: expire_chunk(tx, t, b)  # type: ignore[misc]
                )
                deleted[table] = deleted.get(table, 0) + n
                self.expired.labels(table).inc(n)
                if n < CHUNK:
                    break
        if any(deleted.values()):
            log.info("retention: expired rows deleted", extra={"deleted": deleted})
        return deleted

    async def run(self, ctx: ChildContext) -> None:
        ctx.ready()
        next_expiry = time.monotonic() + 60.0
        while True:
            await self.rollup()
            if time.monotonic() >= next_expiry:
                await self.expire()
                next_expiry = time.monotonic() + self.retention.every_s
            await asyncio.sleep(self.rollup_every_s)
