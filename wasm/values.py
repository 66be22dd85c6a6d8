"""How a reading's Python values become the numbers a policy sees.

Both the compiled agent's host and the reference interpreter use these rules, so they are
part of the language: a field is a number when Python's ``struct`` packs it as a double
(ints, floats and booleans; ints too large for a double are not), anything else is missing
(NaN). Timestamps are clamped to the signed 64-bit range.
"""

from __future__ import annotations

import struct
from typing import Any

NAN = float("nan")
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
_D = struct.Struct("<d")


def as_number(value: Any) -> float:
    """The policy's view of one field value: a float, NaN when missing or not a number."""
    try:
        packed = _D.pack(value)
    except (struct.error, OverflowError, TypeError):
        return NAN
    result: float = _D.unpack(packed)[0]
    return result


def clamp_i64(value: int) -> int:
    """A timestamp as the agent sees it: ``value`` clamped to the signed 64-bit range."""
    return I64_MIN if value < I64_MIN else min(value, I64_MAX)
