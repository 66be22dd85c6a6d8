"""What a pattern means against an event: one place, shared by interpreter, compiler and index.

The rules (docs/patterns.md repeats them for pattern authors):

- An event is a mapping; a path walks nested mappings. A key that is absent, or a step into
  something that is not a mapping, makes the field *missing*.
- Every comparison on a missing field is false (``neq`` and ``nin`` too, as in goldrush);
  only ``nf``/``Missing`` and ``not`` can be true for it.
- Numbers compare by value across int and float (``1 == 1.0``, ``2 > 1.5``). ``bool`` is
  not a number: ``true`` equals only ``true``, and ordering a bool is no match.
- Ordering works between two numbers or two strings (code-point order). Any other pair is
  a type mismatch and simply does not match: evaluation never raises ``TypeError``.
- ``null`` equals only ``null``. NaN equals nothing and orders with nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from amcp.wire.telemetry import Reading


class _Missing:
    """The value of a field that is not there; equal to nothing but itself."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


def lookup(event: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path``, or :data:`MISSING`."""
    value: Any = event
    for key in path:
        if not isinstance(value, Mapping):
            return MISSING
        value = value.get(key, MISSING)
        if value is MISSING:
            return MISSING
    return value


def get_key(value: Any, key: str) -> Any:
    """One step of :func:`lookup`, used by generated code for non-dict mappings."""
    if isinstance(value, Mapping):
        return value.get(key, MISSING)
    return MISSING


def is_number(value: object) -> bool:
    """Int or float, never bool (``True`` is an int to Python, not a reading to us)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def equal(a: object, b: object) -> bool:  # noqa: PLR0911
    """Pattern equality: numbers by value, bool only with bool, otherwise same kind and ==."""
    if a is MISSING or b is MISSING:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_number(a) and is_number(b):
        return bool(a == b)
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if a is None or b is None:
        return a is None and b is None
    try:  # lists and mappings from decoded events: structural equality
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def ordered(op: str, a: object, b: object) -> bool:
    """``a op b`` for op in gt/gte/lt/lte; false unless both numbers or both strings."""
    if not ((is_number(a) and is_number(b)) or (isinstance(a, str) and isinstance(b, str))):
        return False
    x: Any = a
    y: Any = b
    if op == "gt":
        return bool(x > y)
    if op == "gte":
        return bool(x >= y)
    if op == "lt":
        return bool(x < y)
    return bool(x <= y)


def compare(op: str, a: object, b: object) -> bool:
    """Any of the six comparison operators with the rules above."""
    if a is MISSING or b is MISSING:
        return False
    if op == "eq":
        return equal(a, b)
    if op == "neq":
        return not equal(a, b)
    return ordered(op, a, b)


def contains(container: object, item: object) -> bool:
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, list | tuple):
        return any(equal(x, item) for x in container)
    return False


def prefix(value: object, start: str) -> bool:
    return isinstance(value, str) and value.startswith(start)


def regex(value: object, compiled: re.Pattern[str]) -> bool:
    return isinstance(value, str) and compiled.search(value) is not None


def event_from_reading(reading: Reading) -> dict[str, Any]:
    """A reading as a pattern sees it: its values at the top, identity fields beside them.

    ``device``, ``boot``, ``seq`` and ``ts_ms`` win over a value of the same name; the raw
    values stay reachable under ``values`` (``values.device``).
    """
    event = dict(reading.values)
    event["device"] = reading.device
    event["boot"] = reading.boot
    event["seq"] = reading.seq
    event["ts_ms"] = reading.ts_ms
    event["values"] = reading.values
    return event
