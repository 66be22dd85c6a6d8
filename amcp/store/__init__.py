"""The CRDT store: a last-writer-wins map in SQLite, shared by the gateway and the cloud.

See docs/architecture.md ("Decisions kept from the design") and docs/store.md for why state
is an LWW map and for the conflict rules.

- :class:`Store`: the asyncio API (one writer thread, concurrent readers, notifications).
- :class:`LWWStore`: the same operations, synchronous, for one thread (benchmarks, tools).
- :class:`Row`, :class:`Chunk`, :class:`ChangeSet` and their encoders: what sync sends.
- :mod:`amcp.store.types` (GMap, LWWRegister, counters) and :mod:`amcp.store.twins`.
"""

from amcp.store.errors import (
    ClockSkewError,
    InvalidRowError,
    SchemaTooNewError,
    SiteMismatchError,
    StoreClosedError,
    StoreError,
    UnknownPeerError,
    ValueTooLargeError,
)
from amcp.store.hlc import HybridClock
from amcp.store.lww import Change, LWWStore
from amcp.store.peers import PeerState
from amcp.store.reads import Entry
from amcp.store.rows import (
    ChangeSet,
    Chunk,
    Row,
    decode_changes,
    decode_rows,
    encode_changes,
    encode_rows,
)
from amcp.store.schema import recorded_site
from amcp.store.store import Store

__all__ = [
    "Change",
    "ChangeSet",
    "Chunk",
    "ClockSkewError",
    "Entry",
    "HybridClock",
    "InvalidRowError",
    "LWWStore",
    "PeerState",
    "Row",
    "SchemaTooNewError",
    "SiteMismatchError",
    "Store",
    "StoreClosedError",
    "StoreError",
    "UnknownPeerError",
    "ValueTooLargeError",
    "decode_changes",
    "decode_rows",
    "encode_changes",
    "encode_rows",
    "recorded_site",
]
