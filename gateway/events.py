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
from collections import Counter, deque
from collections.abc import Iterable, Sequence

from amcp.runtime.session import Backoff
from amcp.runtime.storage import StorageFullError
from amcp.runtime.supervisor import ChildContext
from amcp.wire.telemetry import EventRecord
from gateway.hooks import EventSink

log = logging.getLogger(__name__)

BATCH_MAX = 1000
RETRY_S = (0.25, 5.0)


class EventWriter:
    def __init__(self, sink: EventSink, *, queue_max: int = 10_000) -> None:
        self.sink = sink
        self.queue_max = queue_max
        self.queue: deque[EventRecord] = deque()
        self.dropped: Counter[str] = Counter()
        """Records dropped, by reason (``queue_full``, ``unwritable``)."""
        self.written = 0
        self._wake = asyncio.Event()
        self._failing = False

    def submit(self, records: Iterable[EventRecord]) -> int:
        """Queue ``records`` for the outbox; returns how many were taken (the rest dropped)."""
        taken = 0
        for record in records:
            if len(self.queue) >= self.queue_max:
                self.dropped["queue_full"] += 1
                continue
            self.queue.append(record)
            taken += 1
        if taken:
            self._wake.set()
        return taken

    def queued(self) -> int:
        """Records waiting for the outbox."""
        return len(self.queue)

    async def append(self, records: Sequence[EventRecord]) -> int:
        """:meth:`submit` in the shape of an :data:`EventSink` (for producers written to one)."""
        return self.submit(records)

    async def run(self, ctx: ChildContext) -> None:
        ctx.ready()
        backoff = Backoff(*RETRY_S)
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self.queue[i] for i in range(min(BATCH_MAX, len(self.queue)))]
            try:
                await self._write(batch)
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
                self.queue.popleft()
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
