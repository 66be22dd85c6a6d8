"""The ingest boundary's one rule, as a property: whatever a device sends, each message is
either stored in the outbox or dead-lettered with its reason (and so acknowledged), and
nothing raises out of ingest. Hostile payloads are generated (sizes, depths, numbers at and
beyond every boundary, invalid UTF-8, msgpack extension types) and go through decoding, the
stages and the encoding into a real outbox file."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amcp.wire.telemetry import Reading
from gateway.config import GatewayConfig
from gateway.ingest import Ingest, _Pending
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox

BOUNDARY_INTS = [
    0,
    -1,
    2**53,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    10**30,
    -(10**30),
]
numbers = st.one_of(
    st.sampled_from(BOUNDARY_INTS),
    st.integers(),
    st.floats(),  # NaN and infinities included
)
leaves = st.one_of(numbers, st.text(max_size=8), st.booleans(), st.none())
trees = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


def _json(doc: Any) -> bytes:
    try:
        return msgspec.json.encode(doc)
    except (OverflowError, TypeError, ValueError):
        return repr(doc).encode()  # not JSON: still a payload to refuse


def _msgpack(doc: Any) -> bytes:
    try:
        return msgspec.msgpack.encode(doc)
    except (OverflowError, TypeError, ValueError):
        return b"\xc1" + repr(doc).encode()


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "msgpack", "bytes", "deep", "ext", "utf8", "big"]))
    values = draw(st.dictionaries(st.text(min_size=1, max_size=6), trees, max_size=6))
    doc: dict[str, Any] = {"values": values}
    if draw(st.booleans()):
        doc["seq"] = draw(st.one_of(st.sampled_from(BOUNDARY_INTS), st.text(max_size=3)))
    if draw(st.booleans()):
        doc["ts"] = draw(st.sampled_from(BOUNDARY_INTS))
    if kind == "json":
        return _json(doc)
    if kind == "msgpack":
        return _msgpack(doc)
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "deep":
        depth = draw(st.integers(1, 3000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return b'{"values": {"x": ' + opener * depth + b"1" + closer * depth + b"}}"
    if kind == "ext":
        code = draw(st.integers(-128, 127))
        return _msgpack({"values": {"x": msgspec.msgpack.Ext(code, draw(st.binary(max_size=9)))}})
    if kind == "utf8":
        return b'{"values": {"x": "' + draw(st.binary(min_size=1, max_size=8)) + b'"}}'
    return b'{"values": {"x": "' + b"a" * draw(st.integers(60_000, 70_000)) + b'"}}'


devices = st.one_of(
    st.sampled_from(["dev-1", "dev-2"]), st.text(max_size=200).filter(lambda d: "/" not in d)
)


class _Harness:
    """One event loop and one real outbox file for every example (opening one per example
    would make the property run slowly, and the rule is about each message, not the file)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        secret = Path(self.dir.name) / "link"
        secret.write_text("00" * 32)
        secret.chmod(0o600)
        config = msgspec.convert(
            {
                "gateway": {"id": "gw-prop", "state_dir": self.dir.name},
                "uplink": {"link_secret_file": str(secret)},
            },
            GatewayConfig,
        )
        self.outbox = Outbox(
            Path(self.dir.name) / "outbox.sqlite3", config.outbox, dead_letter_max_rows=10**9
        )
        self.loop.run_until_complete(self.outbox.open())
        self.ingest = Ingest(
            config.ingest,
            self.outbox,
            GatewayMetrics(),
            broker=config.local_broker,
            client_id="t-ingest",
            stages=[_flaky_stage],
        )

    def counts(self) -> tuple[int, int]:
        with sqlite3.connect(self.outbox.path) as db:
            rows = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        return rows, dead


def _flaky_stage(readings: list[Reading]) -> list[Reading]:
    """A stage with a bug for one kind of reading: it must cost that reading only."""
    if any("boom" in r.values for r in readings):
        raise RuntimeError("stage bug")
    return readings


@pytest.fixture(scope="module")
def harness() -> _Harness:
    h = _Harness()
    yield h  # type: ignore[misc]
    h.loop.run_until_complete(h.outbox.close())
    h.loop.close()
    h.dir.cleanup()


@settings(max_examples=150, deadline=None)
@given(batch=st.lists(st.tuples(devices, payloads()), min_size=1, max_size=12))
def test_every_message_is_stored_or_dead_lettered(
    harness: _Harness, batch: list[tuple[str, bytes]]
) -> None:
    good = msgspec.json.encode({"values": {"ok": 1}})
    boom = msgspec.json.encode({"values": {"boom": 1}})
    batch = [*batch, ("dev-1", good), ("dev-2", boom), ("dev-1", good)]
    before_rows, before_dead = harness.counts()
    pending = _Pending()
    for device, payload in batch:
        harness.ingest.accept(pending, f"devices/{device}/telemetry", payload)
    harness.loop.run_until_complete(harness.ingest.commit(pending))
    rows, dead = harness.counts()
    assert (rows - before_rows) + (dead - before_dead) == len(batch)
    assert rows - before_rows >= 2  # the good readings beside the bad ones are stored
    assert harness.ingest.backlog == 0
