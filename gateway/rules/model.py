"""The stored form of rules and actions: what the cloud writes, files hold and the CLI edits.

One rule is one of three kinds, tagged in ``type`` (the CRDT store keeps one JSON document
per rule id in the namespace ``patterns``)::

    {"type": "pattern",   "when": "humidity > 55"}
    {"type": "window",    "pattern": "humid", "count": 3, "within_s": 10, "actions": ["alert"]}
    {"type": "situation", "when": "exists(fired.humid3) and exists(fired.hot)", "within_s": 60}

A pattern's ``when`` is GoldRush text or its AST (``amcp.goldrush.encode``); ``=> name`` in
the text names actions like ``actions`` does. Files and the ``[rules]`` config section hold
the same documents grouped by kind (``[patterns.ID]``, ``[windows.ID]``,
``[situations.ID]``, ``[actions.NAME]``), so there ``type`` is implied.

Schema evolution (gateways and the cloud run different versions): new fields get defaults,
existing fields never change type; a gateway refuses a document it cannot decode and keeps
running what it had (see :mod:`gateway.rules.manager`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from amcp.goldrush.query import Query

Severity = Literal["debug", "info", "warning", "error", "critical"]
KeyPath = tuple[str, ...]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class _Action(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    """Base of the action kinds."""


class EventAction(_Action, frozen=True, kw_only=True, omit_defaults=True, tag="event"):
    """An event (or alert) to the cloud, through the outbox: it survives days offline."""

    name: str = ""
    """Dotted event name; empty: ``rules.<rule id>``."""
    severity: Severity = "warning"
    message: str = ""


class AlgedonicAction(_Action, frozen=True, kw_only=True, omit_defaults=True, tag="algedonic"):
    """A pain/pleasure signal for S5: an event named ``algedonic`` with severity critical."""

    valence: Literal["pain", "pleasure"] = "pain"
    intensity: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    reason: str = ""


class CommandAction(_Action, frozen=True, kw_only=True, omit_defaults=True, tag="command"):
    """A device command on the local broker (``devices/{device}/commands/{id}``, JSON)."""

    action: str
    args: dict[str, Any] = {}
    device: str = ""
    """Which device; empty: the device of the reading that fired the rule."""
    timeout_ms: int | None = None


class CapabilityAction(_Action, frozen=True, kw_only=True, omit_defaults=True, tag="capability"):
    """Invoke a capability registered on the gateway by name (S1 provides them)."""

    capability: str
    args: dict[str, Any] = {}


ActionSpec = EventAction | AlgedonicAction | CommandAction | CapabilityAction
ActionRef = str | ActionSpec
"""A named action (built in or from ``[actions]``) or one written inline."""

BUILTIN_ACTIONS: dict[str, ActionSpec] = {
    "alert": EventAction(severity="warning"),
    "event": EventAction(severity="info"),
    "algedonic": AlgedonicAction(),
}


class _Rule(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    actions: list[ActionRef] = []
    cooldown_s: NonNegative = 0.0
    """After firing for a key, its actions rest this long for that key (0: never)."""
    enabled: bool = True
    description: str = ""


class PatternRule(_Rule, frozen=True, forbid_unknown_fields=True, tag="pattern"):
    when: str | Query


class WindowRule(_Rule, frozen=True, forbid_unknown_fields=True, tag="window"):
    pattern: str
    count: Annotated[int, msgspec.Meta(ge=1)]
    within_s: Annotated[float, msgspec.Meta(gt=0)]
    kind: Literal["sliding", "tumbling"] = "sliding"
    key: KeyPath = ("device",)
    max_keys: Annotated[int, msgspec.Meta(ge=1)] = 10_000


class SituationRule(_Rule, frozen=True, forbid_unknown_fields=True, tag="situation"):
    when: str
    within_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    key: KeyPath = ("device",)
    max_keys: Annotated[int, msgspec.Meta(ge=1)] = 10_000


Rule = PatternRule | WindowRule | SituationRule


class RuleFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A patterns file (TOML or JSON), also embedded in the ``[rules]`` config section."""

    patterns: dict[str, PatternRule] = {}
    windows: dict[str, WindowRule] = {}
    situations: dict[str, SituationRule] = {}
    actions: dict[str, ActionSpec] = {}

    def rules(self) -> dict[str, Rule]:
        """Every rule by id; an id used for two kinds is an error."""
        out: dict[str, Rule] = {}
        for group in (self.patterns, self.windows, self.situations):
            for rid, rule in group.items():
                if rid in out:
                    raise RuleFileError(f"rule id {rid!r} is used twice")
                out[rid] = rule
        return out


class RuleFileError(ValueError):
    """A patterns file that cannot be read or decoded; the message names the file and field."""


_rule_decoder = msgspec.json.Decoder(Rule)
_encoder = msgspec.json.Encoder()


def encode_rule(rule: Rule) -> bytes:
    """The JSON document stored under the rule's id in the ``patterns`` namespace."""
    return _encoder.encode(rule)


def decode_rule(data: bytes) -> Rule:
    """Inverse of :func:`encode_rule`; ``msgspec.ValidationError`` names the bad field."""
    rule: Rule = _rule_decoder.decode(data)
    return rule


def load_rule_file(path: Path) -> RuleFile:
    """Read a ``.toml`` or ``.json`` patterns file (blocking: call from a worker thread)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RuleFileError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        if path.suffix == ".json":
            return msgspec.json.decode(raw, type=RuleFile)
        return msgspec.convert(tomllib.loads(raw.decode()), RuleFile)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RuleFileError(f"{path}: not valid TOML: {exc}") from exc
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise RuleFileError(f"{path}: {exc}") from exc
