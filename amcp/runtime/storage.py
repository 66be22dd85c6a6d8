"""Storage failures told apart from bugs: a full disk is a state to wait out, not a crash.

SQLite reports a full disk as ``SQLITE_FULL`` ("database or disk is full") and rolls the
transaction back itself, so a plain ``ROLLBACK`` in an error handler then fails with "cannot
rollback - no transaction is active" and hides the real error. :func:`transaction` rolls back
only a transaction that is still open and raises :class:`StorageFullError` for a full disk,
so callers can pause (ingest leaves messages with the broker, which redelivers them) and
resume when space returns, instead of restarting until their supervisor gives up.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Iterator

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_SQLITE = frozenset({"SQLITE_FULL"})


class StorageFullError(OSError):
    """The filesystem under a database is full (or over quota); nothing was written."""

    def __init__(self, detail: str) -> None:
        super().__init__(errno.ENOSPC, detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"storage full: {self.detail}"


def is_storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) means the disk is full."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, StorageFullError):
            return True
        if isinstance(cur, sqlite3.Error):
            name = getattr(cur, "sqlite_errorname", "")
            if name in _FULL_SQLITE or "database or disk is full" in str(cur):
                return True
        elif isinstance(cur, OSError) and cur.errno in _FULL_ERRNOS:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def as_storage_error(exc: BaseException) -> BaseException:
    """``exc`` as :class:`StorageFullError` when it means a full disk, else unchanged."""
    if is_storage_full(exc) and not isinstance(exc, StorageFullError):
        return StorageFullError(str(exc))
    return exc


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """One write transaction on an autocommit (``isolation_level=None``) connection: commits
    on success; on failure rolls back what is still open and re-raises, a full disk as
    :class:`StorageFullError`."""
    try:
        db.execute(begin)
        yield
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        mapped = as_storage_error(exc)
        if mapped is not exc:
            raise mapped from exc
        raise
