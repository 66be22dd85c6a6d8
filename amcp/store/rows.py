"""Row encoding shared by the store and the sync layer.

A row is what travels between replicas: the map row itself without the local version
counter (versions are per database and mean nothing elsewhere). Rows are msgspec
``array_like`` Structs so one small row costs about 30 bytes of msgpack: no field names.
Schema evolution: new fields go at the end with defaults; existing fields never change type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec

T = TypeVar("T")


class Row(msgspec.Struct, array_like=True, frozen=True):
    """One LWW map entry as replicas exchange it.

    ``value`` is ``None`` for a tombstone (a delete). When ``chunks > 0`` the value was too
    large for one row: ``value`` is then the SHA-256 of the whole value and the bytes travel
    in ``chunks`` :class:`Chunk` rows carrying the same (namespace, key, hlc, site).
    """

    namespace: str
    key: str
    value: bytes | None
    hlc: int
    site: str
    chunks: int = 0


class Chunk(msgspec.Struct, array_like=True, frozen=True):
    """One piece of a large value; immutable, identified by the write it belongs to."""

    namespace: str
    key: str
    hlc: int
    site: str
    index: int
    data: bytes


class ChangeSet(msgspec.Struct, array_like=True, frozen=True):
    """Rows and chunks changed after a version, as :meth:`LWWStore.changes_since` returns.

    ``version`` is the highest local version included: a peer that committed this change
    set acknowledges it, and the next call starts there. ``more`` says whether rows remain.
    """

    rows: list[Row]
    chunks: list[Chunk]
    version: int
    more: bool = False


_row_list_encoder = msgspec.msgpack.Encoder()
_row_list_decoder = msgspec.msgpack.Decoder(list[Row])
_changes_decoder = msgspec.msgpack.Decoder(ChangeSet)


def encode_rows(rows: list[Row]) -> bytes:
    return _row_list_encoder.encode(rows)


def _typed(decode: Callable[[bytes], T], data: bytes) -> T:
    try:
        return decode(data)
    except UnicodeDecodeError as exc:  # msgspec raises it for invalid UTF-8 in a str field
        raise msgspec.DecodeError(f"invalid UTF-8 in a text field: {exc.reason}") from None


def decode_rows(data: bytes) -> list[Row]:
    """Decode rows; raises ``msgspec.ValidationError``/``DecodeError`` on bad input."""
    return _typed(_row_list_decoder.decode, data)


def encode_changes(changes: ChangeSet) -> bytes:
    return _row_list_encoder.encode(changes)


def decode_changes(data: bytes) -> ChangeSet:
    """Decode a change set; raises ``msgspec.ValidationError``/``DecodeError`` on bad input."""
    return _typed(_changes_decoder.decode, data)


def row_size(row: Row) -> int:
    """Approximate encoded size, used to fill batches up to a byte limit without encoding."""
    value = len(row.value) if row.value is not None else 1
    return 24 + len(row.namespace) + len(row.key) + len(row.site) + value


def chunk_size(chunk: Chunk) -> int:
    return 28 + len(chunk.namespace) + len(chunk.key) + len(chunk.site) + len(chunk.data)
