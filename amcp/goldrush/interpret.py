"""The reference interpreter: a direct reading of the semantics, kept beside the compiler.

It is slow on purpose (no caching, no index) so that it is obviously right; property tests
check the compiler and the indexed set against it on random queries and events.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from amcp.goldrush import semantics as sem
from amcp.goldrush.errors import QueryError
from amcp.goldrush.query import (
    All,
    Contains,
    Eq,
    Exists,
    FieldCmp,
    Gt,
    Gte,
    In,
    Lt,
    Lte,
    Missing,
    Neq,
    Not,
    NotIn,
    Null,
    Prefix,
    Query,
    Regex,
    With,
)
from amcp.goldrush.query import Any as AnyOf

_CMP = {Eq: "eq", Neq: "neq", Gt: "gt", Gte: "gte", Lt: "lt", Lte: "lte"}


def compile_regex(pattern: str) -> re.Pattern[str]:
    """``re.compile`` with its error mapped to :class:`QueryError`."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise QueryError(f"bad regex {pattern!r}: {exc}") from exc


def matches(query: Query, event: Mapping[str, Any]) -> bool:  # noqa: C901, PLR0911, PLR0912
    """Whether ``event`` satisfies ``query`` (actions of a ``With`` are not run)."""
    match query:
        case With(cond=cond):
            return matches(cond, event)
        case Null(value=value):
            return value
        case All(conds=conds):
            return all(matches(c, event) for c in conds)
        case AnyOf(conds=conds):
            return any(matches(c, event) for c in conds)
        case Not(cond=cond):
            return not matches(cond, event)
        case Eq() | Neq() | Gt() | Gte() | Lt() | Lte():
            return sem.compare(_CMP[type(query)], sem.lookup(event, query.path), query.value)
        case Exists(path=path):
            return sem.lookup(event, path) is not sem.MISSING
        case Missing(path=path):
            return sem.lookup(event, path) is sem.MISSING
        case In(path=path, values=values):
            v = sem.lookup(event, path)
            return any(sem.equal(v, x) for x in values)
        case NotIn(path=path, values=values):
            v = sem.lookup(event, path)
            return v is not sem.MISSING and not any(sem.equal(v, x) for x in values)
        case Contains(path=path, value=value):
            return sem.contains(sem.lookup(event, path), value)
        case Prefix(path=path, value=value):
            return sem.prefix(sem.lookup(event, path), value)
        case Regex(path=path, pattern=pattern):
            return sem.regex(sem.lookup(event, path), compile_regex(pattern))
        case FieldCmp(cmp=op, left=left, right=right):
            return sem.compare(op, sem.lookup(event, left), sem.lookup(event, right))
    raise QueryError(f"unknown node {query!r}")
