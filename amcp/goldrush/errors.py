"""Errors of the rule engine.

::

    GoldrushError
    ├── ParseError      text syntax is wrong; .position is the 0-based offset, .line/.column
    └── QueryError      a well-formed query that cannot run (bad regex, unknown action name)
"""

from __future__ import annotations


class GoldrushError(Exception):
    """Base of every error this package raises on purpose."""

    pattern_id: str | None = None
    """Which pattern of a set was bad, when the error came from building a set."""


class ParseError(GoldrushError):
    """The pattern text is not valid; the message points at the offending character."""

    def __init__(self, message: str, text: str, position: int) -> None:
        self.reason = message
        self.text = text
        self.position = position
        before = text[:position]
        self.line = before.count("\n") + 1
        self.column = position - (before.rfind("\n") + 1) + 1
        line_text = text.splitlines()[self.line - 1] if text.strip() else ""
        caret = " " * (self.column - 1) + "^"
        super().__init__(
            f"{message} at line {self.line}, column {self.column} (offset {position})\n"
            f"  {line_text}\n  {caret}"
        )


class QueryError(GoldrushError):
    """A query that parses but cannot be compiled; ``pattern_id`` names it inside a set."""

    def __init__(self, message: str, pattern_id: str | None = None) -> None:
        self.reason = message
        self.pattern_id = pattern_id
        prefix = f"pattern {pattern_id!r}: " if pattern_id is not None else ""
        super().__init__(prefix + message)
