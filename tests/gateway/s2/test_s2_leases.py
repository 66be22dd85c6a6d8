"""Actuator leases: conflicting commands serialize or are refused; leases expire."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.s2.events import LeaseExpired, S2Event
from gateway.s2.leases import Granted, LeaseTable, Queued, RefusalReason, Refused


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_two_conflicting_commands_produce_one_lease() -> None:
    clock = Clock()
    table = LeaseTable(clock, ttl_s=10)
    first = table.acquire("valve", "alice", "cmd-1")
    second = table.acquire("valve", "bob", "cmd-2")
    assert isinstance(first, Granted)
    assert isinstance(second, Refused)
    assert second.reason is RefusalReason.HELD
    assert second.held_by == "alice"
    assert second.retry_after_s == 10
    assert table.active() == 1
    assert table.refused[RefusalReason.HELD] == 1


def test_second_command_waits_and_is_granted_on_release() -> None:
    clock = Clock()
    outcomes: list[tuple[str, Granted | Refused]] = []
    table = LeaseTable(clock, notify=lambda cid, outcome: outcomes.append((cid, outcome)))
    first = table.acquire("valve", "alice", "cmd-1")
    assert isinstance(first, Granted)
    queued = table.acquire("valve", "bob", "cmd-2", wait=True)
    assert isinstance(queued, Queued)
    assert queued.position == 1
    assert queued.blocked_by == first.lease
    assert not outcomes
    assert table.release(first.lease) is None
    assert len(outcomes) == 1
    cid, outcome = outcomes[0]
    assert cid == "cmd-2"
    assert isinstance(outcome, Granted)
    assert outcome.lease.holder == "bob"
    assert outcome.lease.token > first.lease.token  # fencing tokens only grow
    assert not table.valid("valve", first.lease.token)
    assert table.valid("valve", outcome.lease.token)


def test_lease_expires_and_frees_the_actuator() -> None:
    clock = Clock()
    events: list[S2Event] = []
    outcomes: list[tuple[str, Granted | Refused]] = []
    table = LeaseTable(
        clock,
        ttl_s=5,
        emit=events.append,
        notify=lambda cid, outcome: outcomes.append((cid, outcome)),
    )
    held = table.acquire("valve", "alice", "cmd-1")
    assert isinstance(held, Granted)
    assert isinstance(table.acquire("valve", "bob", "cmd-2", wait=True, wait_s=60), Queued)
    clock.now += 4.9
    table.sweep()
    assert table.holders("valve") == [held.lease]
    clock.now += 0.1
    table.sweep()
    assert next(e for e in events if isinstance(e, LeaseExpired)).holder == "alice"
    assert table.expired == 1
    assert outcomes[0][0] == "cmd-2"
    assert isinstance(table.release(held.lease), Refused)  # too late: not the holder any more


def test_renew_extends_and_stale_renew_is_refused() -> None:
    clock = Clock()
    table = LeaseTable(clock, ttl_s=5)
    held = table.acquire("valve", "alice", "cmd-1")
    assert isinstance(held, Granted)
    clock.now += 4
    renewed = table.renew(held.lease)
    assert isinstance(renewed, Granted)
    assert renewed.lease.token == held.lease.token
    clock.now += 4
    assert table.valid("valve", held.lease.token)
    stale = table.renew(held.lease)  # the old value: the renewal replaced it
    assert isinstance(stale, Refused)
    assert stale.reason is RefusalReason.NOT_HOLDER


def test_actuator_leases_conflict_only_on_the_same_actuator_or_whole_device() -> None:
    clock = Clock()
    table = LeaseTable(clock)
    assert isinstance(table.acquire("plc", "a", "c1", actuator="pump"), Granted)
    assert isinstance(table.acquire("plc", "b", "c2", actuator="fan"), Granted)
    assert isinstance(table.acquire("plc", "c", "c3", actuator="pump"), Refused)
    whole = table.acquire("plc", "d", "c4")
    assert isinstance(whole, Refused)
    assert isinstance(table.acquire("other", "d", "c5"), Granted)


def test_same_command_asking_again_gets_its_lease() -> None:
    table = LeaseTable(Clock())
    first = table.acquire("valve", "alice", "cmd-1")
    again = table.acquire("valve", "alice", "cmd-1")
    assert first == again


def test_queue_is_bounded_and_waiters_time_out() -> None:
    clock = Clock()
    outcomes: list[tuple[str, Granted | Refused]] = []
    table = LeaseTable(clock, ttl_s=100, max_queue=1, notify=lambda c, o: outcomes.append((c, o)))
    table.acquire("valve", "a", "c1")
    assert isinstance(table.acquire("valve", "b", "c2", wait=True, wait_s=2), Queued)
    full = table.acquire("valve", "c", "c3", wait=True)
    assert isinstance(full, Refused)
    assert full.reason is RefusalReason.QUEUE_FULL
    clock.now += 2
    table.sweep()
    assert outcomes[0][0] == "c2"
    refusal = outcomes[0][1]
    assert isinstance(refusal, Refused)
    assert refusal.reason is RefusalReason.WAIT_TIMEOUT
    assert table.waiting() == 0


def test_free_actuator_does_not_let_a_newcomer_overtake_the_queue() -> None:
    clock = Clock()
    table = LeaseTable(clock, ttl_s=100)
    table.acquire("plc", "a", "c1", actuator="pump")
    table.acquire("plc", "b", "c2", wait=True)  # whole device: waits for the pump
    newcomer = table.acquire("plc", "c", "c3", actuator="fan")
    assert isinstance(newcomer, Refused)  # the fan is free, but c2 (whole device) is first
    assert newcomer.held_by == "b"


ops = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "wait", "release", "tick"]),
        st.sampled_from(["d1", "d2"]),
        st.sampled_from([None, "x", "y"]),
    ),
    max_size=80,
)


@given(ops)
def test_no_two_conflicting_leases_are_ever_held(steps: list[tuple[str, str, str | None]]) -> None:
    clock = Clock()
    granted: list[Granted] = []
    table = LeaseTable(
        clock,
        ttl_s=3,
        notify=lambda _c, o: granted.append(o) if isinstance(o, Granted) else None,
    )
    for n, (op, device, actuator) in enumerate(steps):
        if op in {"acquire", "wait"}:
            out = table.acquire(device, f"h{n}", f"c{n}", actuator=actuator, wait=op == "wait")
            if isinstance(out, Granted):
                granted.append(out)
        elif op == "release" and granted:
            table.release(granted.pop(0).lease)
        else:
            clock.now += 1
            table.sweep()
        for dev in ("d1", "d2"):
            held = table.holders(dev)
            for i, a in enumerate(held):
                for b in held[i + 1 :]:
                    assert a.actuator is not None
                    assert b.actuator is not None
                    assert a.actuator != b.actuator


def test_a_waiter_whose_deadline_is_the_holders_expiry_gets_the_lease_when_noticed_late() -> None:
    """The holder's lease runs out at t+10 and the waiter (queued a moment later) would give up
    at t+10.001; the table only looks at t+10.5. The device was free before the waiter gave
    up, so it is served, not timed out, and every grant and refusal is an event (audited)."""
    clock = Clock()
    events: list[S2Event] = []
    outcomes: list[tuple[str, Granted | Refused]] = []
    table = LeaseTable(
        clock, ttl_s=10, notify=lambda c, o: outcomes.append((c, o)), emit=events.append
    )
    assert isinstance(table.acquire("valve", "crashed", "gone"), Granted)
    clock.now += 0.001
    assert isinstance(table.acquire("valve", "bob", "cmd-2", wait=True), Queued)
    clock.now += 10.5
    table.sweep()
    ((cid, outcome),) = outcomes
    assert cid == "cmd-2"
    assert isinstance(outcome, Granted)
    assert [type(e).__name__ for e in events] == ["LeaseGranted", "LeaseExpired", "LeaseGranted"]
    # one that really waited too long (the device stayed busy past its deadline) is refused
    assert isinstance(table.acquire("valve", "carol", "cmd-3", wait=True, wait_s=1), Queued)
    clock.now += 2
    table.sweep()
    assert isinstance(outcomes[-1][1], Refused)
    assert outcomes[-1][1].reason is RefusalReason.WAIT_TIMEOUT
    assert type(events[-1]).__name__ == "LeaseRefused"
