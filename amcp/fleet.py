"""Fleet state the cloud authors and the gateways apply: row formats and targeting.

Both tiers import this module: the cloud (``cloud.authoring``) writes the rows, a gateway
(``gateway.s2.limit_rows``) picks the ones meant for it and applies them. Sync sends every
row of a cloud-owned namespace to every gateway (``amcp.sync.authority``), so a row says in
its key which gateways it is for (docs/s2.md, "Limits from the cloud"):

=====================  =========================================
key starts with        meant for
=====================  =========================================
``all/``               every gateway
``zone/<zone>/``       the gateways whose zone is ``<zone>``
``gw/<gateway>/``      that one gateway
=====================  =========================================

``limits`` rows: ``<target>/<scope>/<name>`` with scope ``device``, ``capability`` or
``principal`` (``all/device/flood``, ``zone/north/capability/valve.open``,
``gw/gw-7/principal/alice``); the value is a msgpack :class:`LimitValue`. A gateway applies,
per (scope, name), the most specific row meant for it (``gw`` over ``zone`` over ``all``).

``zones`` rows: key ``<gateway>``, value a msgpack :class:`ZoneValue`: the gateway's zone,
which replaces the ``[gateway] zone`` of its configuration while the row exists.

``pattern.fleet`` rows (:data:`FLEET_PATTERNS`): key ``<target>/<rule id>``, value the rule's
JSON document (the same document a gateway's own ``patterns`` namespace holds,
``gateway.rules.model``). A gateway's rules service runs, per rule id, the most specific row
meant for it, over its local rules of the same id (docs/rules.md, "Patterns from the cloud").

Every decoder here raises :class:`RowError` naming the field that is wrong, so the cloud
refuses a bad value at authoring time with the same words a gateway would report.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from amcp.goldrush import GoldrushError, PatternSet, Query, parse
from amcp.goldrush.query import split_with

LIMITS = "limits"
ZONES = "zones"
FLEET_PATTERNS = "pattern.fleet"
"""Rules the cloud authors for targets (cloud-owned through sync's ``pattern.*`` rule)."""
MAX_RULE_BYTES = 256 * 1024

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
"""A gateway id or a zone name: no ``/`` (it separates the key's parts), no blanks."""
MAX_KEY_NAME = 256


class RowError(ValueError):
    """A row (or an authored value) that fails its schema; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class LimitScope(enum.StrEnum):
    DEVICE = "device"
    CAPABILITY = "capability"
    PRINCIPAL = "principal"


class Target(msgspec.Struct, frozen=True):
    """Which gateways a row is for: every one, one zone's, or one gateway."""

    kind: Literal["all", "zone", "gateway"]
    name: str = ""

    @classmethod
    def all(cls) -> Target:
        return cls("all")

    @classmethod
    def zone(cls, zone: str) -> Target:
        return cls("zone", check_name("zone", zone))

    @classmethod
    def gateway(cls, gateway: str) -> Target:
        return cls("gateway", check_name("gateway", gateway))

    @property
    def prefix(self) -> str:
        """The key prefix of the rows for this target (ends with ``/``)."""
        if self.kind == "all":
            return "all/"
        return f"{'gw' if self.kind == 'gateway' else 'zone'}/{self.name}/"

    @property
    def rank(self) -> int:
        """Specificity: a gateway's own row beats its zone's, which beats the fleet's."""
        return {"all": 0, "zone": 1, "gateway": 2}[self.kind]

    def includes(self, gateway: str, zone: str) -> bool:
        if self.kind == "all":
            return True
        return self.name == (gateway if self.kind == "gateway" else zone)

    def __str__(self) -> str:
        return self.prefix.rstrip("/")

    @classmethod
    def parse(cls, text: str) -> Target:
        """``all``, ``zone/<zone>`` or ``gw/<gateway>``."""
        wrong = RowError("target", f"{text!r} is not all, zone/<zone> or gw/<gateway>")
        try:
            target, rest = split_target(text + "/")
        except RowError as exc:
            if exc.field != "target":
                raise  # a bad zone or gateway name: named as such
            raise wrong from None
        if rest:
            raise wrong
        return target


def check_name(field: str, value: str) -> str:
    if not NAME.fullmatch(value):
        raise RowError(
            field, f"{value!r} is not a name (letters, digits, . _ : @ -; at most 128; no /)"
        )
    return value


def split_target(key: str) -> tuple[Target, str]:
    """The target a key starts with, and the rest of the key."""
    head, _, rest = key.partition("/")
    if head == "all":
        return Target.all(), rest
    if head in ("gw", "zone"):
        name, sep, rest = rest.partition("/")
        if not sep:
            raise RowError("target", f"{key!r}: {head}/ needs a name and then the row's key")
        if head == "gw":
            return Target.gateway(name), rest
        return Target.zone(name), rest
    raise RowError("target", f"{key!r} does not start with all/, zone/<zone>/ or gw/<gateway>/")


# -- limits -------------------------------------------------------------------------------
class LimitValue(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A ``limits`` row's value: ``rate`` events per second, ``burst`` at once (the same
    fields and bounds as the gateway's ``[s2.limits]`` entries, with upper bounds)."""

    rate: Annotated[float, Meta(gt=0, le=1e9)]
    burst: Annotated[int, Meta(ge=1, le=1_000_000_000)] = 1


class LimitKey(msgspec.Struct, frozen=True):
    target: Target
    scope: LimitScope
    name: str

    @property
    def key(self) -> str:
        return f"{self.target.prefix}{self.scope}/{self.name}"


def limit_key(target: Target, scope: str, name: str) -> LimitKey:
    """A checked ``limits`` key (the CLI's ``device/flood`` is ``scope/name``)."""
    try:
        kind = LimitScope(scope)
    except ValueError:
        raise RowError(
            "scope", f"{scope!r} is not one of {', '.join(s.value for s in LimitScope)}"
        ) from None
    if not name or len(name) > MAX_KEY_NAME or name.strip() != name:
        raise RowError("name", f"{name!r}: give a non-empty name of at most {MAX_KEY_NAME}")
    return LimitKey(target, kind, name)


def parse_limit_key(key: str) -> LimitKey:
    target, rest = split_target(key)
    scope, sep, name = rest.partition("/")
    if not sep:
        raise RowError("scope", f"{key!r}: after the target give <scope>/<name>")
    return limit_key(target, scope, name)


def _field(exc: msgspec.ValidationError | msgspec.DecodeError) -> tuple[str, str]:
    """(field, problem) from msgspec's ``Expected ... - at `$.rate``` message."""
    text = str(exc)
    problem, sep, where = text.rpartition(" - at `$.")
    if sep:
        return where.rstrip("`"), problem
    found = re.search(r"field `([^`]+)`", text)
    return (found.group(1) if found else "value"), text


def limit_value(rate: object, burst: object = 1) -> LimitValue:
    """A checked :class:`LimitValue` from authored fields (raises :class:`RowError`)."""
    try:
        return msgspec.convert({"rate": rate, "burst": burst}, LimitValue)
    except msgspec.ValidationError as exc:
        raise RowError(*_field(exc)) from None


def decode_limit(raw: bytes) -> LimitValue:
    try:
        return msgspec.msgpack.decode(raw, type=LimitValue)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise RowError(*_field(exc)) from None


def encode_limit(value: LimitValue) -> bytes:
    return msgspec.msgpack.encode(value)


# -- zones --------------------------------------------------------------------------------
class ZoneValue(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A ``zones`` row's value (its key is the gateway id)."""

    zone: str

    def __post_init__(self) -> None:
        check_name("zone", self.zone)


def decode_zone(raw: bytes) -> ZoneValue:
    try:
        return msgspec.msgpack.decode(raw, type=ZoneValue)
    except RowError:
        raise
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        field, problem = _field(exc)
        if "zone:" in problem:  # __post_init__'s RowError, wrapped by msgspec
            problem = problem.split("zone:", 1)[1].strip()
        raise RowError(field if field != "value" else "zone", problem) from None


def encode_zone(zone: str) -> bytes:
    return msgspec.msgpack.encode(ZoneValue(check_name("zone", zone)))


# -- desired twins ------------------------------------------------------------------------
MAX_DESIRED_BYTES = 64 * 1024


def desired_key(device: str, field: str) -> str:
    """A ``twin.desired`` row's key (``amcp.store.twins``: one row per top-level field)."""
    if not device or "/" in device or len(device) > MAX_KEY_NAME:
        raise RowError("device", f"{device!r}: a device name, without /")
    if not field or "/" in field or len(field) > MAX_KEY_NAME:
        raise RowError("field", f"{field!r}: a top-level field name, without /")
    return f"{device}/{field}"


def encode_desired(value: object) -> bytes:
    if value is None:
        raise RowError("value", "null is not a desired value (remove the field instead)")
    try:
        raw = msgspec.msgpack.encode(value)
    except (TypeError, OverflowError) as exc:
        raise RowError("value", f"not encodable: {exc}") from None
    if len(raw) > MAX_DESIRED_BYTES:
        raise RowError("value", f"{len(raw)} bytes encoded, at most {MAX_DESIRED_BYTES}")
    return raw


# -- fleet patterns -----------------------------------------------------------------------
class PatternKey(msgspec.Struct, frozen=True):
    target: Target
    rule: str

    @property
    def key(self) -> str:
        return f"{self.target.prefix}{self.rule}"


def pattern_key(target: Target, rule: str) -> PatternKey:
    """A checked ``pattern.fleet`` key: the target, then the rule id."""
    if not rule or len(rule) > MAX_KEY_NAME or rule.strip() != rule or not rule.isprintable():
        raise RowError("rule", f"{rule!r}: give a rule id of at most {MAX_KEY_NAME}, no blanks")
    return PatternKey(target, rule)


def parse_pattern_key(key: str) -> PatternKey:
    target, rest = split_target(key)
    return pattern_key(target, rest)


_KINDS = ("pattern", "window", "situation")


def _when(doc: dict[str, Any], *, ast: bool) -> None:
    """Parse (and for a pattern, compile) ``when`` with GoldRush; RowError("when") if not."""
    when = doc.get("when")
    try:
        if ast and isinstance(when, dict):
            query = msgspec.convert(when, Query)
        elif isinstance(when, str):
            query = parse(when)
        else:
            raise RowError("when", "required: GoldRush text, e.g. 'temp > 80 => alert'")
        if ast:  # a pattern: compile its condition (situations are compiled with their facts)
            PatternSet.compile({"rule": split_with(query)[0]})
    except msgspec.ValidationError as exc:
        raise RowError("when", f"not a GoldRush AST: {exc}") from None
    except (GoldrushError, RecursionError) as exc:
        raise RowError("when", f"{type(exc).__name__}: {exc}") from None


def _number(doc: dict[str, Any], name: str, *, minimum: float, integer: bool) -> None:
    value = doc.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        raise RowError(name, f"required: {'a whole number' if integer else 'a number'}")
    if not value >= minimum or value == float("inf"):
        raise RowError(name, f"{value!r} is below {minimum:g} (or not finite)")


def check_rule(doc: object) -> bytes:
    """The stored JSON of a rule document, checked as far as this tier can: an object with a
    known ``type``, its GoldRush text parsed (a pattern's compiled), a window's numbers in
    bounds, at most :data:`MAX_RULE_BYTES`. The gateway decodes the full schema (unknown
    fields, actions) and refuses what fails there with a ``rules.refused`` event; the command
    line compiles the whole rule as a gateway does before it sends it."""
    if not isinstance(doc, dict):
        raise RowError("rule", "a rule is a JSON object with a type (pattern, window, situation)")
    kind = doc.get("type")
    if kind not in _KINDS:
        raise RowError("type", f"{kind!r} is not one of {', '.join(_KINDS)}")
    if kind == "window":
        if not isinstance(doc.get("pattern"), str) or not doc["pattern"]:
            raise RowError("pattern", "required: the id of the pattern the window counts")
        _number(doc, "count", minimum=1, integer=True)
        _number(doc, "within_s", minimum=1e-9, integer=False)
    else:
        _when(doc, ast=kind == "pattern")
    if not isinstance(doc.get("actions", []), list):
        raise RowError("actions", "a list of action names or inline actions")
    try:
        raw = msgspec.json.encode(doc)
    except (TypeError, OverflowError) as exc:
        raise RowError("rule", f"not encodable: {exc}") from None
    if len(raw) > MAX_RULE_BYTES:
        raise RowError("rule", f"{len(raw)} bytes encoded, at most {MAX_RULE_BYTES}")
    return raw
