"""The ``[rules]`` section of the gateway configuration (documented in docs/rules.md)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from amcp.runtime.settings import Seconds
from gateway.rules.model import ActionSpec, PatternRule, RuleFile, SituationRule, WindowRule

STORE_NAMESPACE = "patterns"
STORE_FILE = "store.sqlite3"
"""The gateway's CRDT store, in its state directory (what ``cybernetic patterns`` edits)."""


class RulesSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    files: list[str] = []
    """Patterns files (TOML or JSON, see examples/patterns/); re-read when they change."""
    patterns: dict[str, PatternRule] = {}
    windows: dict[str, WindowRule] = {}
    situations: dict[str, SituationRule] = {}
    actions: dict[str, ActionSpec] = {}
    """Named actions rules may use besides the built-in ``alert``, ``event``, ``algedonic``."""
    namespace: str = STORE_NAMESPACE
    """Store namespace the cloud writes rules to; rows there override files and config."""
    time: Literal["event", "arrival"] = "event"
    """Window clock: the reading's own timestamp, or when the gateway received it."""
    poll_interval: Seconds = 2.0
    """How often files and the store file are checked for changes made by other processes."""
    carry_state: bool = True
    """Keep counters and window history of unchanged rules across swaps."""
    queue_max: Annotated[int, msgspec.Meta(gt=0)] = 10_000
    """Actions waiting to run; past this, new ones are dropped and counted."""
    workers: Annotated[int, msgspec.Meta(gt=0, le=64)] = 4
    retry_attempts: Annotated[int, msgspec.Meta(ge=1)] = 6
    retry_initial: Seconds = 0.2
    retry_max: Seconds = 10.0

    def inline(self) -> RuleFile:
        return RuleFile(
            patterns=self.patterns,
            windows=self.windows,
            situations=self.situations,
            actions=self.actions,
        )
