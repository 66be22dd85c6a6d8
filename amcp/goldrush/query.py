"""The pattern AST: msgspec tagged Structs, so a pattern is stored and synced as plain data.

Operators follow Erlang's goldrush (``glc_ops``): ``eq neq gt gte lt lte``, ``wc`` (field
exists), ``nf`` (field missing), ``null`` (constant true/false), ``all``, ``any`` and
``with`` (attach named actions). Past goldrush: dotted paths into nested fields, ``in`` /
``nin``, ``contains`` / ``prefix`` / ``regex``, ``fcmp`` (two fields compared) and ``not``.

Every node is frozen and tagged in the ``op`` field, so the JSON form reads like
``{"op":"gt","path":["temp"],"value":90}``. Paths are tuples of keys (a key may itself
contain a dot). Schema evolution: new node kinds get new tags; existing fields never change.
Do not put nodes in sets or use ``==`` to deduplicate them: ``True == 1`` in Python, so
``Eq(p, True) == Eq(p, 1)``; use :func:`canonical` instead.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Scalar = str | int | float | bool | None
"""A constant in a pattern. JSON gives exactly these (``1`` is int, ``1.0`` is float)."""

Path = tuple[str, ...]

CmpOp = Literal["eq", "neq", "gt", "gte", "lt", "lte"]


class _Node(msgspec.Struct, frozen=True, tag_field="op"):
    """Base of every condition node."""


class Null(_Node, frozen=True, tag="null"):
    """goldrush ``null(true|false)``: matches every event, or none."""

    value: bool


class _Cmp(_Node, frozen=True):
    path: Path
    value: Scalar


class Eq(_Cmp, frozen=True, tag="eq"):
    """Field exists and equals ``value`` (numbers by value: ``1 == 1.0``; bool only bool)."""


class Neq(_Cmp, frozen=True, tag="neq"):
    """Field exists and does not equal ``value`` (goldrush ``'!='``: a missing field fails)."""


class Gt(_Cmp, frozen=True, tag="gt"):
    """Field > value; both numbers or both strings, otherwise no match."""


class Gte(_Cmp, frozen=True, tag="gte"):
    """Field >= value."""


class Lt(_Cmp, frozen=True, tag="lt"):
    """Field < value."""


class Lte(_Cmp, frozen=True, tag="lte"):
    """Field <= value."""


class Exists(_Node, frozen=True, tag="wc"):
    """goldrush ``wc``: the field is present (any value, ``null`` included)."""

    path: Path


class Missing(_Node, frozen=True, tag="nf"):
    """goldrush ``nf``: the field is absent."""

    path: Path


class In(_Node, frozen=True, tag="in"):
    """Field exists and equals one of ``values``."""

    path: Path
    values: tuple[Scalar, ...]


class NotIn(_Node, frozen=True, tag="nin"):
    """Field exists and equals none of ``values``."""

    path: Path
    values: tuple[Scalar, ...]


class Contains(_Node, frozen=True, tag="contains"):
    """A string field contains ``value`` as a substring, or a list field holds an equal item."""

    path: Path
    value: Scalar


class Prefix(_Node, frozen=True, tag="prefix"):
    """A string field starts with ``value``."""

    path: Path
    value: str


class Regex(_Node, frozen=True, tag="regex"):
    """A string field matches ``pattern`` anywhere (Python ``re.search``)."""

    path: Path
    pattern: str


class FieldCmp(_Node, frozen=True, tag="fcmp"):
    """Two fields compared with the same rules as a field against a constant."""

    cmp: CmpOp
    left: Path
    right: Path


class All(_Node, frozen=True, tag="all"):
    """Every condition holds (goldrush ``all``). Empty means true."""

    conds: tuple[Cond, ...]


class Any(_Node, frozen=True, tag="any"):
    """At least one condition holds (goldrush ``any``). Empty means false."""

    conds: tuple[Cond, ...]


class Not(_Node, frozen=True, tag="not"):
    """The condition does not hold (a missing field makes ``gt`` false, so ``not gt`` true)."""

    cond: Cond


class With(_Node, frozen=True, tag="with"):
    """goldrush ``with``: a condition plus the names of the actions to run on a match."""

    cond: Cond
    actions: tuple[str, ...]


Cond = (
    Null
    | Eq
    | Neq
    | Gt
    | Gte
    | Lt
    | Lte
    | Exists
    | Missing
    | In
    | NotIn
    | Contains
    | Prefix
    | Regex
    | FieldCmp
    | All
    | Any
    | Not
)
Query = Cond | With
"""What a stored pattern is: a condition, optionally wrapped in ``With``."""

Leaf = Eq | Neq | Gt | Gte | Lt | Lte | Exists | Missing | In | NotIn | Contains | Prefix | Regex
CMP_TYPES: dict[str, type[_Cmp]] = {
    "eq": Eq,
    "neq": Neq,
    "gt": Gt,
    "gte": Gte,
    "lt": Lt,
    "lte": Lte,
}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Query)


def encode(query: Query) -> bytes:
    """The JSON form stored in the CRDT store and sent over the wire."""
    return _encoder.encode(query)


def decode(data: bytes | str) -> Query:
    """Inverse of :func:`encode`; raises ``msgspec.ValidationError`` naming the bad path."""
    query: Query = _decoder.decode(data)
    return query


def canonical(node: Cond | With) -> bytes:
    """A byte key that tells nodes apart exactly (``true`` vs ``1`` vs ``1.0``)."""
    return _encoder.encode(node)


def split_with(query: Query) -> tuple[Cond, tuple[str, ...]]:
    """The condition and action names of a query (no actions when it is a bare condition)."""
    if isinstance(query, With):
        return query.cond, query.actions
    return query, ()
