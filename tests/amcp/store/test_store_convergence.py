"""Convergence: replicas and a hub exchanging deltas over a hostile network end identical.

The network reorders, duplicates and drops delta batches; replica clocks are skewed (some
beyond the limit, so batches are refused and retried); replicas restart from disk. After a
final reliable exchange every replica's canonical dump equals the hub's **and** the oracle
(the highest (hlc, site) row ever written per key). A deliberately broken merge rule is run
through the same property to show the check catches it.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from amcp.store import ClockSkewError, LWWStore, Row
from amcp.store import lww as lww_module
from amcp.store.rows import ChangeSet

HUB = "hub"
START_MS = 1_800_000_000_000
MAX_AHEAD_MS = 60_000
CHUNK = 16
KEYS = ["a", "b", "c"]


@dataclass
class Wall:
    ms: int

    def __call__(self) -> int:
        return self.ms


@dataclass
class Message:
    src: str
    dst: str
    start: int
    changes: ChangeSet


@dataclass
class Sim:
    root: Path
    names: list[str]
    walls: dict[str, Wall] = field(default_factory=dict)
    stores: dict[str, LWWStore] = field(default_factory=dict)
    net: list[Message] = field(default_factory=list)
    oracle: dict[tuple[str, str], Row] = field(default_factory=dict)

    def open(self, name: str) -> LWWStore:
        store = LWWStore(
            self.root / f"{name}.db",
            name,
            wall_ms=self.walls[name],
            max_ahead_ms=MAX_AHEAD_MS,
            chunk_bytes=CHUNK,
        )
        self.stores[name] = store
        return store

    def links(self) -> list[tuple[str, str]]:
        return [(r, HUB) for r in self.names if r != HUB] + [
            (HUB, r) for r in self.names if r != HUB
        ]

    def write(self, name: str, key: str, value: bytes | None) -> None:
        store = self.stores[name]
        change = store.write([("ns", key, value)])[0]
        row = Row("ns", key, value, change.hlc, change.site)
        old = self.oracle.get(("ns", key))
        if old is None or (row.hlc, row.site) > (old.hlc, old.site):
            self.oracle["ns", key] = row

    def send(self, src: str, dst: str) -> None:
        """Queue every batch src has for dst past dst's acknowledged watermark."""
        store = self.stores[src]
        peer = store.peer(dst)
        assert peer is not None
        start = peer.acked
        while True:
            changes = store.changes_since(start, limit_bytes=120, exclude_site=dst)
            self.net.append(Message(src, dst, start, changes))
            start = changes.version
            if not changes.more:
                break

    def deliver(self, message: Message) -> bool:
        """Apply one batch at its destination; acknowledge what is now contiguous."""
        dst = self.stores[message.dst]
        src = self.stores[message.src]
        mark = dst.peer(message.src)
        assert mark is not None
        contiguous = message.start <= mark.received
        try:
            dst.merge(
                message.changes.rows,
                message.changes.chunks,
                peer=message.src,
                peer_version=message.changes.version if contiguous else None,
            )
        except ClockSkewError:
            return False
        after = dst.peer(message.src)
        assert after is not None
        src.ack(message.dst, after.received)
        return True

    def heal(self, rng: random.Random) -> None:
        """Align clocks, then exchange everything reliably, each round in a random order."""
        top = max(w.ms for w in self.walls.values())
        for wall in self.walls.values():
            wall.ms = top + 1
        in_flight = list(self.net)
        self.net.clear()
        for _ in range(3):
            for src, dst in self.links():
                self.send(src, dst)
            batch = in_flight + self.net
            in_flight = []
            self.net.clear()
            rng.shuffle(batch)
            for message in batch:
                assert self.deliver(message)
        for src, dst in self.links():  # a last in-order pass picks up what the shuffle skipped
            self.send(src, dst)
            while self.net:
                assert self.deliver(self.net.pop(0))

    def expected_dump(self) -> bytes:
        return msgspec.msgpack.encode([self.oracle[k] for k in sorted(self.oracle)])


write_op = st.tuples(
    st.just("write"),
    st.integers(0, 4),
    st.sampled_from(KEYS),
    st.one_of(st.none(), st.binary(max_size=8), st.binary(min_size=CHUNK + 1, max_size=50)),
)
ops = st.lists(
    st.one_of(
        write_op,  # listed thrice: most interesting histories have many writes
        write_op,
        write_op,
        st.tuples(st.just("send"), st.integers(0, 9)),
        st.tuples(st.just("deliver"), st.integers(0, 50), st.booleans()),
        st.tuples(st.just("drop"), st.integers(0, 50)),
        st.tuples(st.just("restart"), st.integers(0, 4)),
        st.tuples(st.just("tick"), st.integers(0, 4), st.integers(0, 40_000)),
    ),
    max_size=60,
)
replica_counts = st.integers(2, 5)
skews = st.lists(st.integers(-20_000, 20_000), min_size=5, max_size=5)


def run(n: int, skew: list[int], script: list[tuple[object, ...]], rng: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"r{i}" for i in range(n)] + [HUB]
        sim = Sim(Path(tmp), names)
        for i, name in enumerate(names):
            sim.walls[name] = Wall(START_MS + (skew[i] if name != HUB else 0))
            sim.open(name)
        for src, dst in sim.links():
            sim.stores[dst].hello(src, sim.stores[src].database_id)
        replicas = names[:-1]
        try:
            for op in script:
                _step(sim, replicas, op)
            sim.heal(rng)
            expected = sim.expected_dump()
            for name, store in sim.stores.items():
                assert store.canonical_dump() == expected, f"{name} differs from the oracle"
        finally:
            for store in sim.stores.values():
                store.close()


def _step(sim: Sim, replicas: list[str], op: tuple[object, ...]) -> None:
    match op:
        case ("write", int(i), str(key), value):
            sim.write(replicas[i % len(replicas)], key, value)  # type: ignore[arg-type]
        case ("send", int(i)):
            links = sim.links()
            sim.send(*links[i % len(links)])
        case ("deliver", int(i), bool(duplicate)) if sim.net:
            message = sim.net[i % len(sim.net)]
            if sim.deliver(message) and not duplicate:
                sim.net.remove(message)
        case ("drop", int(i)) if sim.net:
            sim.net.pop(i % len(sim.net))
        case ("restart", int(i)):
            name = replicas[i % len(replicas)]
            sim.stores[name].close()
            sim.open(name)
        case ("tick", int(i), int(ms)):
            sim.walls[replicas[i % len(replicas)]].ms += ms
        case _:
            pass


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(replica_counts, skews, ops, st.randoms(use_true_random=False))
def test_replicas_converge_to_the_oracle(
    n: int, skew: list[int], script: list[tuple[object, ...]], rng: random.Random
) -> None:
    run(n, skew, script, rng)


def test_a_broken_merge_rule_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Last-delivered-wins (no clock comparison) must fail the same property."""
    broken = lww_module.MERGE_SQL.split(" WHERE ")[0]
    monkeypatch.setattr(lww_module, "MERGE_SQL", broken)

    @settings(
        max_examples=500,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # finding one counterexample is the point; skip shrinking
        suppress_health_check=list(HealthCheck),
    )
    @given(replica_counts, skews, ops, st.randoms(use_true_random=False))
    def prop(n: int, skew: list[int], script: list[tuple[object, ...]], rng: random.Random) -> None:
        run(n, skew, script, rng)

    with pytest.raises(AssertionError, match="differs from the oracle"):
        prop()
