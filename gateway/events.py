"""The one way gateway events reach the outbox: S2's, the rules', the policy's flags.

Producers hand records to :meth:`EventWriter.submit` (never blocks, never raises: events come
from the ingest path and from S2's control tick, which must not wait for a disk). One task
moves them into the outbox (:data:`gateway.hooks.EventSink`) in batches, with one retry rule:

- the batch stays at the head of the queue until the outbox has it; a full disk, a database
  being reopened by the supervisor, anything the outbox raises is retried with backoff;
- a record the outbox can never take (it cannot be encoded) is found by writing the batch
  one record at a time, then logged and dropped alone, so it cannot hold back the others;
- the queue is bounded (``queue_max``): when it is full, new records are dropped and
  counted (``cybernetic_events_dropped_total``), never old ones already waiting.

The writer outlives its task: a supervised restart (the outbox reopened) keeps the queue.
Records are in memory until written; a gateway killed meanwhile loses those (at most a
second's worth while the outbox is healthy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence

import msgspec

from amcp.runtime.session import Backoff
from amcp.runtime.storage import StorageFullError
from amcp.runtime.supervisor import ChildContext
from amcp.wire.telemetry import EventRecord
from gateway.audit import AuditChain
from gateway.hooks import EventSink
from gateway.outbox import encode_row
from gateway.urgent import UrgentLane

log = logging.getLogger(__name__)

BATCH_MAX = 1000
RETRY_S = (0.25, 5.0)


class EventWriter:
    def __init__(
        self,
        sink: EventSink,
        *,
        urgent: UrgentLane | None = None,
        audit: AuditChain | None = None,
        queue_max: int = 10_000,
    ) -> None:
        """``urgent``: where records marked urgent go (algedonic signals, alerts), ahead of the
        outbox's queue; without it they go to ``sink`` with the rest. ``audit``: the chain
        that records each batch's control-relevant events before the batch is written."""
        self.sink = sink
        self.audit = audit
        self._audited: set[int] = set()
        """ids of queued records already in the chain (a retried batch is not recorded twice)."""
        self.urgent = urgent
        self.queue_max = queue_max
        self.queue: deque[EventRecord] = deque()
        self.urgent_queue: deque[EventRecord] = deque()
        """Urgent records, written to the urgent lane before anything in :attr:`queue`."""
        self.dropped: Counter[str] = Counter()
        """Records dropped, by reason (``queue_full``, ``unwritable``)."""
        self.written = 0
        self._wake = asyncio.Event()
        self._failing = False

    def submit(self, records: Iterable[EventRecord]) -> int:
        """Queue ``records`` for the outbox; returns how many were taken (the rest dropped)."""
        taken = 0
        for record in records:
            queue = self.urgent_queue if record.urgent and self.urgent else self.queue
            if len(queue) >= self.queue_max:
                self.dropped["queue_full"] += 1
                continue
            queue.append(record)
            taken += 1
        if taken:
            self._wake.set()
        return taken

    def queued(self) -> int:
        """Records waiting for the outbox (or the urgent lane)."""
        return len(self.queue) + len(self.urgent_queue)

    async def append(self, records: Sequence[EventRecord]) -> int:
        """:meth:`submit` in the shape of an :data:`EventSink` (for producers written to one)."""
        return self.submit(records)

    async def run(self, ctx: ChildContext) -> None:
        ctx.ready()
        backoff = Backoff(*RETRY_S)
        while True:
            queue = self.urgent_queue or self.queue  # urgent first
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [queue[i] for i in range(min(BATCH_MAX, len(queue)))]
            try:
                if self.audit is not None:
                    fresh = [r for r in batch if id(r) not in self._audited]
                    await self.audit.record_events(fresh)
                    self._audited.update(id(r) for r in fresh)
                if queue is self.urgent_queue and self.urgent is not None:
                    await self._write_urgent(self.urgent, batch)
                else:
                    await self._write(batch)
                if self.urgent is not None and self.urgent.over:
                    await self._move_overflow(self.urgent)
            except Exception as exc:  # the outbox cannot take it now: keep it, try again
                delay = backoff.next_delay()
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "events not written to the outbox yet; retrying",
                        extra={"error": str(exc), "events": len(self.queue), "retry_in_s": delay},
                    )
                await asyncio.sleep(delay)
                continue
            for _ in batch:
                self._audited.discard(id(queue.popleft()))
            if self._failing:
                self._failing = False
                log.warning("events written to the outbox again", extra={"events": len(batch)})
            backoff.reset()

    async def _write(self, batch: list[EventRecord]) -> None:
        try:
            await self.sink(batch)
        except (StorageFullError, OSError):
            raise
        except (TypeError, ValueError, OverflowError):
            # maybe one record cannot be encoded: write them one by one, drop that one alone
            for record in batch:
                try:
                    await self.sink([record])
                except (TypeError, ValueError, OverflowError) as exc:
                    self.dropped["unwritable"] += 1
                    log.error(  # noqa: TRY400 - the record is the problem, not the code path
                        "event cannot be stored; dropped",
                        extra={"event": record.name, "source": record.source, "error": str(exc)},
                    )
        self.written += len(batch)

    async def _write_urgent(self, lane: UrgentLane, records: list[EventRecord]) -> None:
        bodies = []
        for record in records:
            try:
                bodies.append(encode_row(record))
            except (TypeError, ValueError, OverflowError) as exc:
                self.dropped["unwritable"] += 1
                log.error(  # noqa: TRY400 - the record is the problem, not the code path
                    "event cannot be stored; dropped",
                    extra={"event": record.name, "source": record.source, "error": str(exc)},
                )
        await lane.append(bodies, int(time.time() * 1000))
        self.written += len(records)

    async def _move_overflow(self, lane: UrgentLane) -> None:
        """A storm of alerts: the oldest beyond the lane's bound wait in the ordinary queue
        (written there before they leave the lane: moved, never lost)."""
        ids, bodies = await lane.overflow()
        if ids:
            await self.sink([msgspec.msgpack.decode(b, type=EventRecord) for b in bodies])
            await lane.forget(ids)
