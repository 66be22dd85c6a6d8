"""Replay defence through the Opener: windows, counters, Bloom false positives, restarts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amcp.crypto import HmacSigner, Keyring
from amcp.replay import ReplayGuard, Verdict
from amcp.wire import (
    CapabilityAnnouncement,
    Command,
    Opener,
    ReplayedEnvelopeError,
    Sealer,
    StaleEnvelopeError,
)
from amcp.wire.envelope import Frame, Header, decode_frame, encode_header, signing_input
from tests.amcp.wire.envelope_support import T0, Link, SetClock, batch

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30)


def nonce_only(link: Link, topic: str, ts_ms: int) -> bytes:
    """An envelope from a sender without counters (a device or a foreign client)."""
    header = Header(
        kind="telemetry.ack",
        id=os.urandom(16).hex(),
        source="gw-1",
        key_id=link.hmac.key_id,
        nonce=os.urandom(16),
        ts_ms=ts_ms,
    )
    hdr = encode_header(header)
    payload = b"\x83\xa4type\xadtelemetry.ack\xa8batch_id\xa1b\xa6stored\x01"
    sig = link.hmac.sign(signing_input(1, topic.encode(), hdr, payload))
    import msgspec  # noqa: PLC0415

    return msgspec.msgpack.encode(Frame(1, hdr, payload, sig))


@fixture_ok
@given(delay=st.floats(min_value=0, max_value=89.9), use_counter=st.booleans())
def test_replay_inside_window_is_rejected(link: Link, delay: float, use_counter: bool) -> None:
    link.clock.now = T0
    data = (
        link.sealer.seal(batch(), "up") if use_counter else nonce_only(link, "up", int(T0 * 1000))
    )
    link.opener.open(data, "up")
    link.clock.now = T0 + delay
    with pytest.raises(ReplayedEnvelopeError):
        link.opener.open(data, "up")


@fixture_ok
@given(delay=st.floats(min_value=90.01, max_value=1e6), use_counter=st.booleans())
def test_replay_outside_window_is_stale(link: Link, delay: float, use_counter: bool) -> None:
    link.clock.now = T0
    data = link.sealer.seal(batch(), "up") if use_counter else nonce_only(link, "up", int(T0 * 1e3))
    link.opener.open(data, "up")
    link.clock.now = T0 + delay
    with pytest.raises(StaleEnvelopeError):
        link.opener.open(data, "up")


def test_forced_bloom_false_positives_never_reject_fresh_messages(
    link: Link, tmp_path: Path
) -> None:
    """A 64-bit filter is saturated after a few messages: every later check is a Bloom hit,
    and the exact store must still tell fresh from replayed."""
    guard = ReplayGuard(tmp_path / "tiny.db", bloom_bits=64, flush_every=7)
    opener = Opener(link.keyring, guard, link.clock)
    sent = [nonce_only(link, "up", int(T0 * 1000)) for _ in range(300)]
    for data in sent:
        assert opener.open(data, "up") is not None
    assert guard.false_positives > 250
    for data in sent[::17]:
        with pytest.raises(ReplayedEnvelopeError):
            opener.open(data, "up")


def test_unsigned_traffic_records_nothing(link: Link) -> None:
    """A forged copy with a bad signature must not burn the real envelope's nonce/counter."""
    data = link.sealer.seal(batch(), "up")
    frame, _ = decode_frame(data)
    import msgspec  # noqa: PLC0415

    forged = msgspec.msgpack.encode(Frame(1, frame.header, frame.payload, b"\x00" * 64))
    with pytest.raises(Exception, match="does not verify"):
        link.opener.open(forged, "up")
    assert link.opener.open(data, "up") is not None


def test_restart_keeps_replay_state(link: Link, tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    guard = ReplayGuard(path)
    opener = Opener(link.keyring, guard, link.clock)
    counted = link.sealer.seal(batch(), "up")
    nonced = nonce_only(link, "up", int(T0 * 1000))
    opener.open(counted, "up")
    opener.open(nonced, "up")
    guard.close()
    link.clock.now += 30
    again = Opener(link.keyring, ReplayGuard(path), link.clock)
    for data in (counted, nonced):
        with pytest.raises(ReplayedEnvelopeError):
            again.open(data, "up")
    link.clock.now += 0.01
    assert again.open(link.sealer.seal(batch(), "up"), "up") is not None


def test_unclean_restart_refuses_everything_stamped_before_it(link: Link, tmp_path: Path) -> None:
    """No close (a crash): unflushed state is gone, so older envelopes are refused as stale."""
    path = tmp_path / "gw.db"
    guard = ReplayGuard(path, flush_every=10_000)
    opener = Opener(link.keyring, guard, link.clock)
    data = link.sealer.seal(batch(), "up")
    opener.open(data, "up")
    link.clock.now += 5
    after_crash = ReplayGuard(path, clock=link.clock)  # the first one is never closed
    assert after_crash.floor_ms == int(link.clock.now * 1000) + 1
    again = Opener(link.keyring, after_crash, link.clock, window_s=1e9)
    with pytest.raises(StaleEnvelopeError, match="unclean restart"):
        again.open(data, "up")
    link.clock.now += 0.01
    assert again.open(link.sealer.seal(batch(), "up"), "up") is not None


def test_backlog_older_than_window_travels_in_fresh_envelopes(link: Link) -> None:
    """Readings stored for days go out in envelopes made at send time, and are accepted."""
    old = batch(200)
    link.clock.now = T0 + 3 * 86400
    opened = link.opener.open(link.hmac_sealer.seal(old, "up"), "up")
    assert opened is not None
    assert opened.message == old
    assert opened.header.ts_ms == int(link.clock.now * 1000)


def test_a_retry_is_a_new_envelope(link: Link) -> None:
    msg = batch()
    assert link.opener.open(link.sealer.seal(msg, "up"), "up") is not None
    assert link.opener.open(link.sealer.seal(msg, "up"), "up") is not None


def test_retained_announcements_are_judged_by_version(link: Link) -> None:
    v1 = link.sealer.seal(CapabilityAnnouncement(node="gw-1", version=1), "caps/gw-1")
    v2 = link.sealer.seal(CapabilityAnnouncement(node="gw-1", version=2), "caps/gw-1")
    link.clock.now += 3600  # retained messages are old envelopes
    assert link.opener.open(v2, "caps/gw-1", retained=True) is not None
    assert link.opener.open(v1, "caps/gw-1", retained=True) is None
    assert link.opener.open(v2, "caps/gw-1", retained=True) is None


def test_retained_flag_does_not_bypass_checks_for_other_kinds(link: Link) -> None:
    data = link.sealer.seal(Command(command_id="c", target="valve", action="open"), "cmd")
    link.clock.now += 3600
    with pytest.raises(StaleEnvelopeError):
        link.opener.open(data, "cmd", retained=True)


@given(
    counters=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=200),
    window=st.sampled_from([8, 64, 1024]),
)
def test_counter_window_matches_an_exact_model(counters: list[int], window: int) -> None:
    guard = ReplayGuard(None, counter_window=window)
    seen: set[int] = set()
    top = 0
    for c in counters:
        verdict = guard.check("k", 0, b"n", 1, c, 0)
        if c in seen and top - c < window:
            assert verdict is Verdict.REPLAY
        elif top - c >= window:
            assert verdict is Verdict.BELOW_WINDOW
        else:
            assert verdict is Verdict.ACCEPT
            seen.add(c)
            top = max(top, c)


def test_counters_are_per_epoch_so_a_restarted_sender_is_accepted(link: Link) -> None:
    first = Sealer(link.hmac, clock=link.clock)
    for _ in range(5):
        link.opener.open(first.seal(batch(), "up"), "up")
    restarted = Sealer(link.hmac, clock=link.clock)  # counter starts again at 1
    assert link.opener.open(restarted.seal(batch(), "up"), "up") is not None


def test_idle_state_is_forgotten_after_the_window(clock: SetClock) -> None:
    signer = HmacSigner("gw-9", os.urandom(32))
    guard = ReplayGuard(None)
    opener = Opener(Keyring([signer.entry()]), guard, clock)
    sealer = Sealer(signer, clock=clock)
    opener.open(sealer.seal(batch(), "up"), "up")
    clock.now += 1000
    opener.open(sealer.seal(batch(), "up"), "up")
    assert len(guard._counters) == 1


def test_a_full_disk_defers_the_guards_writes_and_still_refuses_every_replay(
    tmp_path: Path,
) -> None:
    """A flush that finds the disk full (SQLite's size cap stands in for it) keeps the records
    in memory: the same nonces are still refused as replays, and the next flush with room
    writes them, so a restart refuses them too."""
    clock = SetClock()
    guard = ReplayGuard(tmp_path / "g.db", flush_every=10**9, clock=clock)
    now = int(T0 * 1000)
    nonces = [os.urandom(16) for _ in range(200)]
    assert {guard.check("k", now, n, None, None, now) for n in nonces} == {Verdict.ACCEPT}
    pages = guard._db.execute("PRAGMA page_count").fetchone()[0]
    guard._db.execute(f"PRAGMA max_page_count = {pages}")
    guard.flush()  # deferred, not raised
    assert guard.deferred_flushes == 1
    assert {guard.check("k", now, n, None, None, now) for n in nonces} == {Verdict.REPLAY}
    guard._db.execute("PRAGMA max_page_count = 1000000")
    guard.close()
    again = ReplayGuard(tmp_path / "g.db", clock=clock)
    assert again.floor_ms == 0  # closed cleanly: the store is trusted as it is
    assert {again.check("k", now, n, None, None, now) for n in nonces} == {Verdict.REPLAY}
    again.close()
