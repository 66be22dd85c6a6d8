"""The gateway's one way for events into the outbox (gateway.events): kept and retried until
the outbox takes them, a record that can never be stored dropped alone, a full queue
dropping new records and counting them. On a real outbox file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import msgspec

from amcp.runtime.supervisor import ChildContext
from amcp.wire.telemetry import EventRecord
from gateway.events import EventWriter
from gateway.hooks import EventSink
from gateway.outbox import Outbox, OutboxSettings


def record(n: int, **attrs: object) -> EventRecord:
    return EventRecord(f"test.{n}", 1000 + n, "dev", "info", dict(attrs))


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - polls state the code under test owns
            await asyncio.sleep(0.01)


async def stored(outbox: Outbox) -> list[str]:
    names: list[str] = []
    while (batch := await outbox.next_batch(10_000)) is not None:
        names += [msgspec.msgpack.decode(b, type=EventRecord).name for b in batch.events]
        await outbox.ack(batch.batch_id)
    return names


@contextlib.asynccontextmanager
async def writing(writer: EventWriter) -> AsyncIterator[None]:
    task = asyncio.create_task(writer.run(ChildContext("events")))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def an_outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    outbox = Outbox(tmp_path / "outbox.sqlite3", OutboxSettings())
    await outbox.open()
    try:
        yield outbox
    finally:
        await outbox.close()


async def test_events_are_kept_and_retried_until_the_outbox_takes_them(tmp_path: Path) -> None:
    async with an_outbox(tmp_path) as outbox:
        calls = 0

        async def closed_at_first(records: Sequence[EventRecord]) -> int:
            nonlocal calls
            calls += 1
            if calls <= 3:
                raise OSError("outbox closed")  # as while the supervisor reopens it
            return await outbox.append_events(records)

        writer = EventWriter(closed_at_first)
        async with writing(writer):
            writer.submit([record(n) for n in range(5)])
            await until(lambda: writer.written == 5)
            writer.submit([record(5)])
            await until(lambda: writer.written == 6)
        assert await stored(outbox) == [f"test.{n}" for n in range(6)]  # in order, once each
        assert calls >= 5


async def test_a_record_that_cannot_be_stored_is_dropped_alone(tmp_path: Path) -> None:
    async with an_outbox(tmp_path) as outbox:
        sink: EventSink = outbox.append_events
        writer = EventWriter(sink)
        async with writing(writer):
            writer.submit([record(0), record(1, bad=object()), record(2)])
            await until(lambda: writer.written == 3)
        assert await stored(outbox) == ["test.0", "test.2"]
        assert writer.dropped["unwritable"] == 1


async def test_a_full_queue_drops_new_records_and_counts_them(tmp_path: Path) -> None:
    async with an_outbox(tmp_path) as outbox:
        writer = EventWriter(outbox.append_events, queue_max=3)
        assert writer.submit([record(n) for n in range(5)]) == 3  # nothing is writing yet
        assert writer.dropped["queue_full"] == 2
        async with writing(writer):
            await until(lambda: writer.written == 3)
        assert await stored(outbox) == ["test.0", "test.1", "test.2"]
