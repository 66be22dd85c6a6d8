"""Actuator leases: two commands never drive one actuator at the same time.

A command must hold a lease on its device (or one actuator of it) before it acts. A second,
conflicting command is either queued behind the holder (``wait=True``, served in FIFO order
when the lease is released or expires) or refused with a typed reason. Leases expire, so a
crashed or partitioned holder cannot lock an actuator forever; every lease carries a fencing
``token`` (strictly increasing) which the actuator path checks with :meth:`LeaseTable.valid`
so a holder whose lease already expired cannot act late.

Conflicts: a whole-device lease (``actuator=None``) conflicts with every lease on that
device; two actuator leases conflict only when they name the same actuator.

The command path (S1's executor, docs/s2.md "Actuator leases") awaits :meth:`LeaseTable.take`:
granted at once, or queued and granted in FIFO order, or :class:`LeaseRefusedError`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable

import msgspec

from gateway.s2.events import EventSink, LeaseExpired, LeaseGranted, LeaseRefused, discard


class RefusalReason(enum.StrEnum):
    HELD = "held"
    """A conflicting lease is held and the caller did not ask to wait."""
    QUEUE_FULL = "queue_full"
    """A conflicting lease is held and the device's wait queue is full."""
    WAIT_TIMEOUT = "wait_timeout"
    """The command waited in the queue longer than its wait limit."""
    NOT_HOLDER = "not_holder"
    """Renew or release by someone who does not hold that lease (stale token)."""


class Lease(msgspec.Struct, frozen=True):
    device: str
    actuator: str | None
    holder: str
    command_id: str
    token: int
    expires_at: float
    """On the table's monotonic clock."""


class Granted(msgspec.Struct, frozen=True):
    lease: Lease


class Queued(msgspec.Struct, frozen=True):
    """The command will be granted (or refused) later through the table's ``notify`` callback."""

    position: int
    blocked_by: Lease


class Refused(msgspec.Struct, frozen=True):
    reason: RefusalReason
    device: str
    actuator: str | None
    command_id: str
    held_by: str | None = None
    retry_after_s: float = 0.0


Outcome = Granted | Queued | Refused


class LeaseRefusedError(Exception):
    """:meth:`LeaseTable.take` could not get the lease; ``refused`` says why."""

    def __init__(self, refused: Refused) -> None:
        self.refused = refused
        target = f"device {refused.device!r}" + (
            f" (actuator {refused.actuator!r})" if refused.actuator is not None else ""
        )
        held = f" held by {refused.held_by!r}" if refused.held_by else ""
        match refused.reason:
            case RefusalReason.QUEUE_FULL:
                why = f"the lease on {target} is{held} and its wait queue is full"
            case RefusalReason.WAIT_TIMEOUT:
                why = f"waited too long for the lease on {target}{held}"
            case RefusalReason.HELD:
                why = f"the lease on {target} is{held}"
            case _:
                why = f"the lease on {target} is no longer held by this command"
        super().__init__(f"{why} ({refused.reason})")


Notify = Callable[[str, Granted | Refused], None]
"""Called with (command_id, outcome) when a queued command is finally granted or refused."""


class _Waiter(msgspec.Struct):
    holder: str
    command_id: str
    actuator: str | None
    ttl_s: float
    deadline: float


def _conflicts(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


def _ignore(_command_id: str, _outcome: Granted | Refused) -> None:
    pass


class LeaseTable:
    """All actuator leases of one gateway. Synchronous; call :meth:`sweep` about once a second."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        ttl_s: float = 30.0,
        max_queue: int = 8,
        notify: Notify = _ignore,
        emit: EventSink = discard,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0 or max_queue < 0:
            raise ValueError(f"need ttl_s > 0 and max_queue >= 0, got {ttl_s=} {max_queue=}")
        self._clock = clock
        self._ttl = ttl_s
        self._max_queue = max_queue
        self._notify = notify
        self._emit = emit
        self._wall = wall
        self._held: dict[str, list[Lease]] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        self._next_token = 1
        self._waits: dict[str, asyncio.Future[Granted | Refused]] = {}
        self.granted = 0
        self.expired = 0
        self.refused: dict[RefusalReason, int] = dict.fromkeys(RefusalReason, 0)

    def acquire(
        self,
        device: str,
        holder: str,
        command_id: str,
        *,
        actuator: str | None = None,
        ttl_s: float | None = None,
        wait: bool = False,
        wait_s: float | None = None,
    ) -> Outcome:
        """Take the lease now, queue for it (``wait=True``) or get a typed refusal.

        Asking again with the same ``command_id`` while it holds the lease returns that lease.
        """
        now = self._clock()
        self._expire_device(device, now)
        ttl = self._ttl if ttl_s is None else ttl_s
        held = self._held.get(device, [])
        for lease in held:
            if lease.command_id == command_id and lease.actuator == actuator:
                return Granted(lease)
        blocker = next((x for x in held if _conflicts(x.actuator, actuator)), None)
        queue = self._queues.get(device)
        queued_conflict = queue is not None and any(_conflicts(w.actuator, actuator) for w in queue)
        if blocker is None and not queued_conflict:
            waiter = _Waiter(holder, command_id, actuator, ttl, now)
            return Granted(self._grant(device, waiter, now))
        if blocker is None:  # free now, but earlier waiters go first (FIFO, no overtaking)
            assert queue is not None
            blocker = self._held_or_virtual(device, queue, actuator, now)
        if not wait:
            return self._refuse(
                RefusalReason.HELD,
                device,
                actuator,
                command_id,
                blocker=blocker,
                retry_after=blocker.expires_at - now,
            )
        queue = self._queues.setdefault(device, deque())
        if len(queue) >= self._max_queue:
            return self._refuse(
                RefusalReason.QUEUE_FULL,
                device,
                actuator,
                command_id,
                blocker=blocker,
                retry_after=blocker.expires_at - now,
            )
        deadline = now + (ttl if wait_s is None else wait_s)
        queue.append(_Waiter(holder, command_id, actuator, ttl, deadline))
        return Queued(position=len(queue), blocked_by=blocker)

    @property
    def ttl_s(self) -> float:
        return self._ttl

    async def take(
        self,
        device: str,
        holder: str,
        command_id: str,
        *,
        actuator: str | None = None,
        ttl_s: float | None = None,
        wait_s: float | None = None,
        poll_s: float = 0.5,
    ) -> Lease:
        """:meth:`acquire` with ``wait=True`` for the command path: returns the lease when it
        is granted (at once, or in FIFO order behind the commands queued first) or raises
        :class:`LeaseRefusedError` (``QUEUE_FULL``, ``WAIT_TIMEOUT``).

        While queued it checks the device every ``poll_s`` seconds, so a holder that died
        without releasing frees it when its lease expires even before the next
        :meth:`sweep`. A cancelled caller leaves the queue (and gives back a lease granted at
        that moment)."""
        outcome = self.acquire(
            device,
            holder,
            command_id,
            actuator=actuator,
            ttl_s=ttl_s,
            wait=True,
            wait_s=wait_s,
        )
        if isinstance(outcome, Granted):
            return outcome.lease
        if isinstance(outcome, Refused):
            raise LeaseRefusedError(outcome)
        future: asyncio.Future[Granted | Refused] = asyncio.get_running_loop().create_future()
        self._waits[command_id] = future
        try:
            while not future.done():
                # wake when a held lease expires (the wait queue is served before its own
                # timeouts then), at the latest after poll_s
                held = [x.expires_at for x in self._held.get(device, [])]
                due = min(held, default=float("inf")) - self._clock() + 0.001
                await asyncio.wait({future}, timeout=max(0.001, min(poll_s, due)))
                if not future.done():
                    self._expire_device(device, self._clock())
        except BaseException:
            self._waits.pop(command_id, None)
            self.withdraw(device, command_id)
            granted = future.result() if future.done() else None
            if isinstance(granted, Granted):
                self.release(granted.lease)
            raise
        result = future.result()
        if isinstance(result, Refused):
            raise LeaseRefusedError(result)
        return result.lease

    def withdraw(self, device: str, command_id: str) -> bool:
        """Take a queued command out of the queue (its caller gave up); True if it was there."""
        queue = self._queues.get(device)
        waiter = next((w for w in queue or () if w.command_id == command_id), None)
        if queue is None or waiter is None:
            return False
        queue.remove(waiter)
        self._drain(device, self._clock())  # commands it held back may go now
        return True

    def release(self, lease: Lease) -> Refused | None:
        """Give the lease back (the command finished); the next waiter is granted at once."""
        held = self._held.get(lease.device, [])
        if lease not in held:
            return self._refuse(
                RefusalReason.NOT_HOLDER, lease.device, lease.actuator, lease.command_id
            )
        held.remove(lease)
        self._drain(lease.device, self._clock())
        return None

    def renew(self, lease: Lease, ttl_s: float | None = None) -> Granted | Refused:
        """Extend a lease still held (a long-running command); same token, new expiry."""
        now = self._clock()
        self._expire_device(lease.device, now)
        held = self._held.get(lease.device, [])
        if lease not in held:
            return self._refuse(
                RefusalReason.NOT_HOLDER, lease.device, lease.actuator, lease.command_id
            )
        renewed = msgspec.structs.replace(
            lease, expires_at=now + (self._ttl if ttl_s is None else ttl_s)
        )
        held[held.index(lease)] = renewed
        return Granted(renewed)

    def valid(self, device: str, token: int) -> bool:
        """Fencing check for the actuator path: is ``token`` a live lease on ``device``?"""
        self._expire_device(device, self._clock())
        return any(lease.token == token for lease in self._held.get(device, []))

    def holders(self, device: str) -> list[Lease]:
        self._expire_device(device, self._clock())
        return list(self._held.get(device, []))

    def active(self) -> int:
        return sum(len(v) for v in list(self._held.values()))

    def waiting(self) -> int:
        return sum(len(q) for q in list(self._queues.values()))

    def sweep(self) -> None:
        """Expire overdue leases and waiters on every device (and grant whoever is next)."""
        now = self._clock()
        for device in list(self._held.keys() | self._queues.keys()):
            self._expire_device(device, now)

    # -- internals -----------------------------------------------------------------------

    def _grant(self, device: str, waiter: _Waiter, now: float) -> Lease:
        lease = Lease(
            device,
            waiter.actuator,
            waiter.holder,
            waiter.command_id,
            self._next_token,
            now + waiter.ttl_s,
        )
        self._next_token += 1
        self._held.setdefault(device, []).append(lease)
        self.granted += 1
        self._emit(
            LeaseGranted(
                device=device,
                actuator=lease.actuator,
                holder=lease.holder,
                command_id=lease.command_id,
                token=lease.token,
                ts_ms=int(self._wall() * 1000),
            )
        )
        return lease

    def _refuse(
        self,
        reason: RefusalReason,
        device: str,
        actuator: str | None,
        command_id: str,
        *,
        blocker: Lease | None = None,
        retry_after: float = 0.0,
    ) -> Refused:
        self.refused[reason] += 1
        held_by = blocker.holder if blocker is not None else None
        self._emit(
            LeaseRefused(
                device=device,
                actuator=actuator,
                command_id=command_id,
                reason=reason.value,
                held_by=held_by,
                ts_ms=int(self._wall() * 1000),
            )
        )
        return Refused(
            reason,
            device,
            actuator,
            command_id,
            held_by=blocker.holder if blocker is not None else None,
            retry_after_s=max(0.0, retry_after),
        )

    def _held_or_virtual(
        self, device: str, queue: deque[_Waiter], actuator: str | None, now: float
    ) -> Lease:
        """The lease a newcomer waits behind when the actuator is free but others queue first."""
        first = next(w for w in queue if _conflicts(w.actuator, actuator))
        return Lease(device, first.actuator, first.holder, first.command_id, 0, now + first.ttl_s)

    def _deliver(self, command_id: str, outcome: Granted | Refused) -> None:
        """A queued command's outcome: to its :meth:`take` if it awaits one, else ``notify``."""
        future = self._waits.pop(command_id, None)
        if future is None:
            self._notify(command_id, outcome)
        elif not future.done():
            future.set_result(outcome)
        elif isinstance(outcome, Granted):  # its caller is gone: nobody will act on it
            held = self._held.get(outcome.lease.device, [])
            if outcome.lease in held:
                held.remove(outcome.lease)  # (inside _drain: later waiters see it free)

    def _expire_device(self, device: str, now: float) -> None:
        held = self._held.get(device)
        freed: float | None = None
        if held:
            for lease in [x for x in held if x.expires_at <= now]:
                held.remove(lease)
                freed = lease.expires_at if freed is None else max(freed, lease.expires_at)
                self.expired += 1
                self._emit(
                    LeaseExpired(
                        device=device,
                        actuator=lease.actuator,
                        holder=lease.holder,
                        token=lease.token,
                        ts_ms=int(self._wall() * 1000),
                    )
                )
        self._drain(device, now, freed)

    def _drain(self, device: str, now: float, freed: float | None = None) -> None:
        """Grant queued commands in order while they do not conflict with a held lease.

        ``freed``: when the expired leases ran out. A waiter whose deadline is not before that
        was still waiting when the device became free: it is served, not timed out (the check
        that noticed the expiry may run a little after both times)."""
        queue = self._queues.get(device)
        if queue:
            late = [w for w in queue if w.deadline <= now and (freed is None or w.deadline < freed)]
            for waiter in late:
                queue.remove(waiter)
                self._deliver(
                    waiter.command_id,
                    self._refuse(
                        RefusalReason.WAIT_TIMEOUT,
                        device,
                        waiter.actuator,
                        waiter.command_id,
                    ),
                )
            blocked: list[str | None] = []
            for waiter in list(queue):
                busy = any(
                    _conflicts(x.actuator, waiter.actuator) for x in self._held.get(device, [])
                )
                if busy or any(_conflicts(b, waiter.actuator) for b in blocked):
                    blocked.append(waiter.actuator)
                    continue
                queue.remove(waiter)
                lease = self._grant(device, waiter, now)
                self._deliver(waiter.command_id, Granted(lease))
            if not queue:
                del self._queues[device]
        if device in self._held and not self._held[device]:
            del self._held[device]
