"""Errors raised by the CRDT store.

Every error carries the facts a caller needs as attributes, and says them in its message::

    StoreError
    ├── SchemaTooNewError      the database was written by a newer binary
    ├── ClockSkewError         a remote clock is further ahead than allowed (batch refused)
    ├── ValueTooLargeError     a value exceeds the store's configured maximum
    ├── InvalidRowError        a remote row or chunk is malformed (empty site, bad chunk index)
    ├── SiteMismatchError      the database belongs to another site
    ├── UnknownPeerError       watermarks for a peer that never said hello (or expired)
    └── StoreClosedError       the store was used after close()
"""

from __future__ import annotations

from amcp.runtime import database


class StoreError(Exception):
    """Base class of every error the store raises."""


class SchemaTooNewError(StoreError, database.SchemaTooNewError):
    """The database file has a schema version this binary does not know (``path``,
    ``found``, ``supported``).

    Opening it anyway could corrupt rows written by the newer binary, so it is refused.
    """


class ClockSkewError(StoreError):
    """A remote row carries a clock too far ahead of ours; the whole batch was refused.

    Nothing of the batch is applied, so the sender keeps it and retries: once our wall
    clock catches up the same rows are accepted, and convergence is not lost.
    """

    def __init__(
        self,
        namespace: str,
        key: str,
        *,
        site: str,
        remote_ms: int,
        local_ms: int,
        max_ahead_ms: int,
    ) -> None:
        self.namespace = namespace
        self.key = key
        self.site = site
        self.remote_ms = remote_ms
        self.local_ms = local_ms
        self.max_ahead_ms = max_ahead_ms
        super().__init__(
            f"row {namespace}/{key} from site {site!r} has clock {remote_ms} ms, "
            f"{remote_ms - local_ms} ms ahead of ours (limit {max_ahead_ms} ms); batch refused"
        )


class ValueTooLargeError(StoreError):
    def __init__(self, namespace: str, key: str, size: int, limit: int) -> None:
        self.namespace = namespace
        self.key = key
        self.size = size
        self.limit = limit
        super().__init__(f"value for {namespace}/{key} is {size} bytes; the limit is {limit}")


class InvalidRowError(StoreError):
    def __init__(self, namespace: str, key: str, reason: str) -> None:
        self.namespace = namespace
        self.key = key
        self.reason = reason
        super().__init__(f"invalid row {namespace}/{key}: {reason}")


class SiteMismatchError(StoreError):
    """Opening another site's database would make this process write under its name."""

    def __init__(self, path: str, recorded: str, requested: str) -> None:
        self.path = path
        self.recorded = recorded
        self.requested = requested
        super().__init__(f"{path} belongs to site {recorded!r}, not {requested!r}")


class StoreClosedError(StoreError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"store {path} is closed")


class UnknownPeerError(StoreError):
    """Watermarks were recorded for a peer that never said hello (or whose entry expired)."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        super().__init__(f"peer {peer!r} is unknown or expired; it must say hello first")
