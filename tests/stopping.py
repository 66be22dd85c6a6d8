"""Stopping the tasks a test started, without hanging on a clean-up that waits forever."""

from __future__ import annotations

import asyncio

from amcp.runtime.supervisor import stop_task


async def stop(*tasks: asyncio.Task[object] | asyncio.Future[object], grace: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them. A task stuck in a clean-up (aiomqtt's exit waits for
    the broker's answer to DISCONNECT with no timeout) is cancelled again, as the supervisor
    does (:func:`amcp.runtime.supervisor.stop_task`); a task's own failure is re-raised."""
    for task in tasks:
        stopped = await stop_task(task, grace)  # type: ignore[arg-type]
        assert stopped, f"task {task!r} did not stop after {grace} s, cancelled 3 times"
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
