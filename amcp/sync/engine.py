"""The sync state machine, one per store, independent of the transport that carries frames.

Per peer the engine keeps a *session*: the peer's database id, how far we committed its
versions (``received``), and our outgoing stream (``position`` read so far, ``sent_upto`` the
end of the last delta sent, deltas in flight). Sessions live only while the transport is
connected; everything that must survive a restart is in the store (per-peer watermarks,
committed in the same transactions as the rows), so a reconnect resumes where both sides
committed, never where they merely sent.

- **Handshake.** A :class:`Hello` carries our database id, the peer's database id as we know
  it and our ``received`` mark for it. The receiver records it (a new database id, or a peer
  entry that expired, resets the watermarks: full resync, sent without excluding the peer's
  own rows because a wiped peer lost them) and streams from that mark.
- **Deltas** cover ``(base, version]`` of the sender's versions. The receiver merges a delta
  only when ``base`` is at most its ``received`` mark, so merging it never skips a change;
  a later ``base`` means a delta was lost and the receiver asks for a fresh hello (the
  sender rewinds to what was committed). Deltas are acked after commit.
- **Flow.** At most ``window`` deltas in flight; a delta not acked within ``ack_timeout``
  pauses the stream and the peer is probed with hellos (backing off to ``anti_entropy``), so
  an unreachable peer costs one small frame per period, not a resent backlog.
- **Live updates.** Store commits wake the pump, which waits ``live_delay`` to gather writes.
- **Anti-entropy round.** Every ``anti_entropy`` seconds the gateway re-says hello (watermarks
  compared, stalled or regressed streams restarted), ranges skipped because they held nothing
  for the peer are confirmed with an empty delta, and garbage is collected on its own period.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from amcp.runtime.clock import Clock, SystemClock
from amcp.store import ChangeSet, Chunk, ClockSkewError, Row, Store
from amcp.store import UnknownPeerError as _UnknownPeerError
from amcp.store.rows import encode_changes
from amcp.sync.authority import Authority, Refusal
from amcp.sync.frames import Ack, Delta, Frame, FrameError, Hello, compress
from amcp.sync.inbound import Inbound
from amcp.sync.settings import SyncSettings
from amcp.sync.stats import Role, SyncStats

log = logging.getLogger(__name__)

Send = Callable[[str, Frame], Awaitable[None]]
_EMPTY = encode_changes(ChangeSet([], [], 0))


@dataclass
class _Session:
    peer: str
    peer_db: str
    received: int
    position: int
    sent_upto: int
    confirmed: int
    full_until: int
    inflight: deque[tuple[int, float]] = field(default_factory=deque)
    stalled: bool = False
    probe_at: float = 0.0
    probe_delay: float = 0.0


class SyncEngine:
    def __init__(
        self,
        store: Store,
        role: Role,
        settings: SyncSettings,
        *,
        cloud_site: str = "cloud",
        authority: Authority | None = None,
        clock: Clock | None = None,
        on_refused: Callable[[Refusal], None] | None = None,
    ) -> None:
        self.store = store
        self.role = role
        self.settings = settings
        self.cloud_site = cloud_site
        self.authority = authority or Authority(
            settings.rules, default_owner=settings.default_owner, cloud_site=cloud_site
        )
        self.stats = SyncStats()
        self.sessions: dict[str, _Session] = {}
        self._clock: Clock = clock or SystemClock()
        self._send: Send | None = None
        self._inbound = Inbound(
            store,
            role,
            authority=self.authority,
            stats=self.stats,
            clock=self._clock,
            on_refused=on_refused,
        )
        self._wake = asyncio.Event()
        self._hello_sent: dict[str, float] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def serve(self, send: Send) -> None:
        """Run while one transport connection is up; cancelled when it drops."""
        self._send = send
        self.sessions.clear()
        unsubscribe = self.store.subscribe(
            None, lambda _: self._wake.set(), loop=asyncio.get_running_loop()
        )
        try:
            if self.role is Role.GATEWAY:
                peers = [self.cloud_site]
            else:
                peers = [p.peer for p in await self.store.call(lambda s: s.peers())]
            for peer in peers:
                await self.say_hello(peer, reply=True)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(), name="sync-pump")
                tg.create_task(self._tick(), name="sync-tick")
        finally:
            unsubscribe()
            self._send = None
            self.sessions.clear()

    async def _emit(self, peer: str, frame: Frame) -> None:
        if self._send is None:
            return
        self.stats.frames_sent += 1
        await self._send(peer, frame)

    async def receive(self, peer: str, frame: Frame) -> None:
        """Handle one authenticated frame from ``peer`` (the transport verified who sent it)."""
        if self._send is None:
            return
        self.stats.frames_received += 1
        self.stats.last_received_ms = int(time.time() * 1000)
        match frame:
            case Hello():
                await self._on_hello(peer, frame)
            case Delta():
                await self._on_delta(peer, frame)
            case Ack():
                await self._on_ack(peer, frame)

    # -- handshake -----------------------------------------------------------------------------

    async def say_hello(self, peer: str, *, reply: bool, fresh: bool | None = None) -> None:
        state = await self.store.peer(peer)
        self._hello_sent[peer] = self._clock.monotonic()
        hello = Hello(
            self.store.database_id,
            state.database_id if state else "",
            state.received if state else 0,
            reply=reply,
            fresh=peer not in self.sessions if fresh is None else fresh,
        )
        await self._emit(peer, hello)

    async def _ask_hello(self, peer: str) -> None:
        """Ask the peer to restart its stream, at most once per ``ack_timeout``."""
        last = self._hello_sent.get(peer, -math.inf)
        if self._clock.monotonic() - last >= self.settings.ack_timeout:
            await self.say_hello(peer, reply=True, fresh=True)

    async def _on_hello(self, peer: str, hello: Hello) -> None:
        state = await self.store.hello(peer, hello.database_id)
        old = self.sessions.get(peer)
        had = old is not None and old.peer_db == hello.database_id and not state.reset
        mine = hello.peer_database_id == self.store.database_id
        if state.reset:
            self.stats.resyncs += 1
            log.info("sync: full resync", extra={"peer": peer, "database_id": hello.database_id})
        if (
            old is None
            or not had
            or hello.fresh
            or old.stalled
            or (mine and hello.received < old.confirmed)
        ):
            top = await self.store.version()
            # A mark past our newest version means our file was restored from a backup
            # under the same id; start from what we still have (docs/sync.md).
            start = min(hello.received, top) if mine and not state.reset else 0
            if start:
                await self.store.ack(peer, start)
            full_until = top if state.reset else 0
            self.sessions[peer] = _Session(
                peer, hello.database_id, state.received, start, start, start, full_until
            )
        elif mine and hello.received > old.confirmed:
            self._confirm(old, hello.received)
            await self.store.ack(peer, hello.received)
        if hello.reply:
            await self._emit(
                peer,
                Hello(
                    self.store.database_id,
                    hello.database_id,
                    state.received,
                    reply=False,
                    fresh=not had,
                ),
            )
        self._wake.set()

    # -- receiving -----------------------------------------------------------------------------

    async def _on_delta(self, peer: str, delta: Delta) -> None:
        session = self.sessions.get(peer)
        if session is None or delta.database_id != session.peer_db:
            await self._ask_hello(peer)
            return
        if delta.base > session.received:
            self.stats.gaps += 1
            await self._ask_hello(peer)
            return
        try:
            rows, chunks, refused = await asyncio.to_thread(self._inbound.admit, peer, delta)
        except FrameError as exc:
            self.stats.malformed += 1
            log.warning("sync: malformed delta", extra={"peer": peer, "error": str(exc)})
            return
        try:
            await self._inbound.merge(peer, rows, chunks, delta.version, refused)
        except ClockSkewError as exc:
            # Nothing applied and no ack: the peer stalls, probes, and resends later.
            self.stats.skew_refusals += 1
            log.warning(
                "sync: delta refused for clock skew", extra={"peer": peer, "error": str(exc)}
            )
            return
        except _UnknownPeerError:
            self.sessions.pop(peer, None)
            await self._ask_hello(peer)
            return
        session.received = max(session.received, delta.version)
        self.stats.rows_merged += len(rows)
        if refused:
            await self._inbound.record(refused)
        await self._emit(peer, Ack(delta.database_id, delta.version))

    async def _on_ack(self, peer: str, ack: Ack) -> None:
        session = self.sessions.get(peer)
        if session is None or ack.database_id != self.store.database_id:
            return
        self._confirm(session, ack.version)
        try:
            await self.store.ack(peer, ack.version)
        except _UnknownPeerError:
            self.sessions.pop(peer, None)
        self._wake.set()

    @staticmethod
    def _confirm(session: _Session, version: int) -> None:
        session.confirmed = max(session.confirmed, version)
        while session.inflight and session.inflight[0][0] <= version:
            session.inflight.popleft()

    # -- sending -------------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.settings.live_delay:
                await asyncio.sleep(self.settings.live_delay)
            top = await self.store.version()
            for session in list(self.sessions.values()):
                await self._fill(session, top)

    async def _fill(self, session: _Session, top: int) -> None:
        window = self.settings.window
        while (
            self.sessions.get(session.peer) is session
            and not session.stalled
            and len(session.inflight) < window
            and session.position < top
        ):
            changes, data, codec = await self._read(session)
            if self.sessions.get(session.peer) is not session:
                return  # restarted by a hello while we read
            session.position = max(session.position, changes.version)
            if changes.rows or changes.chunks:
                await self._send_delta(session, changes.version, data, codec)
                self.stats.rows_sent += len(changes.rows)
            if not changes.more:
                return

    async def _send_delta(self, session: _Session, version: int, data: bytes, codec: int) -> None:
        delta = Delta(self.store.database_id, session.sent_upto, version, data, codec)
        session.inflight.append((version, self._clock.monotonic()))
        session.sent_upto = version
        self.stats.deltas_sent += 1
        await self._emit(session.peer, delta)

    async def _read(self, session: _Session) -> tuple[ChangeSet, bytes, int]:
        """The next batch for the peer, at most ``batch_bytes`` encoded, maybe compressed."""
        peer = session.peer
        exclude: str | None = None
        if session.position >= session.full_until:
            exclude = peer if self.role is Role.CLOUD else self.cloud_site
        limit = self.settings.batch_bytes - 1024
        while True:
            found = await self.store.changes_since(session.position, limit, exclude_site=exclude)
            changes, raw = await asyncio.to_thread(self._outgoing, peer, found)
            if len(raw) <= self.settings.batch_bytes or limit <= 2048:
                break
            limit //= 2
        data, codec = compress(raw, above=self.settings.compress_above)
        return changes, data, codec

    def _outgoing(self, peer: str, found: ChangeSet) -> tuple[ChangeSet, bytes]:
        if self.role is Role.CLOUD:

            def keep(item: Row | Chunk) -> bool:
                return self.authority.to_gateway(peer, item)
        else:

            def keep(item: Row | Chunk) -> bool:
                return self.authority.to_cloud(self.store.site, item)

        changes = ChangeSet(
            [r for r in found.rows if keep(r)],
            [c for c in found.chunks if keep(c)],
            found.version,
            found.more,
        )
        return changes, encode_changes(changes)

    # -- timers --------------------------------------------------------------------------------

    async def _tick(self) -> None:
        s = self.settings
        period = min(1.0, s.ack_timeout / 4)
        now = self._clock.monotonic()
        next_round, next_gc = now + s.anti_entropy, now + s.gc_interval
        while True:
            await self._clock.sleep(period)
            now = self._clock.monotonic()
            await self._check_stalls(now)
            if now >= next_round:
                next_round = now + s.anti_entropy
                await self.anti_entropy()
            if now >= next_gc:
                next_gc = now + s.gc_interval
                expired, collected = await self.store.collect_garbage()
                if expired or collected:
                    log.info(
                        "sync: garbage collected", extra={"expired": expired, "rows": collected}
                    )

    async def _check_stalls(self, now: float) -> None:
        timeout = self.settings.ack_timeout
        for session in list(self.sessions.values()):
            if session.inflight and not session.stalled and now - session.inflight[0][1] > timeout:
                session.stalled = True
                session.probe_at = now
                session.probe_delay = timeout
                self.stats.stalls += 1
                log.info("sync: peer not acknowledging; pausing", extra={"peer": session.peer})
            if session.stalled and now >= session.probe_at:
                session.probe_at = now + session.probe_delay
                session.probe_delay = min(2 * session.probe_delay, self.settings.anti_entropy)
                await self.say_hello(session.peer, reply=True, fresh=False)
        if self.role is Role.GATEWAY and self.cloud_site not in self.sessions:
            await self._ask_hello(self.cloud_site)

    async def anti_entropy(self) -> None:
        """One round: re-say hello (gateway), confirm skipped ranges, wake the pump."""
        if self.role is Role.GATEWAY:
            await self.say_hello(self.cloud_site, reply=True)
        for session in list(self.sessions.values()):
            idle = not session.inflight and not session.stalled
            if idle and session.sent_upto < session.position:
                await self._send_delta(session, session.position, _EMPTY, 0)
        self._wake.set()
