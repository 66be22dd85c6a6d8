"""docs/configuration.md lists every setting of gateway.toml and cloud.toml, with its default.

The page has a ``## gateway.toml`` part and a ``## cloud.toml`` part; the ```` ```toml ````
blocks of each part, read together, are one configuration file. These tests walk the msgspec
Structs of :class:`GatewayConfig` and :class:`CloudConfig` (nested sections, optional ones,
tagged unions, dicts and lists of Structs) and check, for each file:

- the documented file is a valid configuration (what ``cybernetic config check`` accepts);
- every section and every field of the code appears in it at its own path; for tables of
  entries (``[rules.patterns.ID]``, ``[[s1.capabilities]]``, ``device_overrides``...) the
  example entries together show every field of the entry's Struct (of each Struct of a union);
- every documented value is the code's default, except the paths in :data:`EXAMPLES`, whose
  value is an example (the page says so and gives the default in the comment).

A new setting without its line in the page fails here. Pure Python: no broker, no daemon.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cloud.config import CloudConfig
from gateway.config import GatewayConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

CONFIGS: dict[str, type[msgspec.Struct]] = {
    "gateway.toml": GatewayConfig,
    "cloud.toml": CloudConfig,
}

EXAMPLES: dict[str, set[str]] = {
    "gateway.toml": {
        "local_broker.password_file",
        "uplink.link_secret_file",
        "uplink.broker.host",
        "uplink.broker.port",
        "uplink.broker.ca_file",
        "uplink.broker.cert_file",
        "s1.units",
        "s1.capabilities",
        "rules.files",
        "rules.patterns",
        "rules.windows",
        "rules.situations",
        "rules.actions",
        "s2.limits.device_overrides",
        "s2.stuck.relations",
        "policy",
        "policy.zones",
    },
    "cloud.toml": {
        "broker.password_file",
        "enrolment.pki_dir",
        "llm.providers",
        "llm.callers",
    },
}
"""Documented values that are examples, not defaults (the page marks each "example")."""


# -- the page ------------------------------------------------------------------------------
def doc_part(text: str, heading: str) -> str:
    """The text under ``## {heading}`` up to the next ``## `` heading."""
    match = re.search(
        rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL
    )
    assert match, f"{DOC.name} has no '## {heading}' part"
    return match.group(1)


def documented(heading: str) -> dict[str, Any]:
    """The TOML blocks of one part of the page, read as one file."""
    part = doc_part(DOC.read_text(), heading)
    blocks = re.findall(r"^```toml\n(.*?)^```", part, re.MULTILINE | re.DOTALL)
    assert blocks, f"the '## {heading}' part of {DOC.name} has no ```toml block"
    return tomllib.loads("\n".join(blocks))


# -- the Structs ---------------------------------------------------------------------------
def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def struct_types(tp: Any) -> list[type[msgspec.Struct]] | None:
    """The Structs a field holds when it is a section: a Struct, ``Struct | None`` or a union
    of Structs. None for anything else (scalars, ``str | Query``: text or a syntax tree)."""
    tp = _unwrap(tp)
    if _is_struct(tp):
        return [tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [_unwrap(m) for m in typing.get_args(tp) if m is not type(None)]
        if members and all(_is_struct(m) for m in members):
            return members
    return None


def entry_types(tp: Any) -> list[type[msgspec.Struct]] | None:
    """The Structs of the entries when the field is a dict or list of them."""
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin is dict:
        return struct_types(typing.get_args(tp)[1])
    if origin is list:
        return struct_types(typing.get_args(tp)[0])
    return None


def pick(candidates: list[type[msgspec.Struct]], table: Any, path: str) -> type[msgspec.Struct]:
    """The Struct a documented table is, by its tag for a tagged union."""
    assert isinstance(table, dict), f"{path}: documented as {table!r}, not a table"
    if len(candidates) == 1:
        return candidates[0]
    for cls in candidates:
        cfg = cls.__struct_config__
        if cfg.tag_field is not None and table.get(cfg.tag_field) == cfg.tag:
            return cls
    raise AssertionError(f"{path}: no type of {[c.__name__ for c in candidates]} matches")


def default_of(info: msgspec.structs.FieldInfo) -> Any:
    if info.default is not msgspec.NODEFAULT:
        return info.default
    if info.default_factory is not msgspec.NODEFAULT:
        try:
            return info.default_factory()
        except ValueError:  # a section with a required field ([uplink] link_secret_file)
            return msgspec.NODEFAULT
    return msgspec.NODEFAULT


def types_in_entries(root: type[msgspec.Struct]) -> set[type[msgspec.Struct]]:
    """Every Struct reachable from ``root`` only through a dict or list: their fields must be
    shown by example entries."""
    found: set[type[msgspec.Struct]] = set()
    seen: set[tuple[type[msgspec.Struct], bool]] = set()

    def visit(cls: type[msgspec.Struct], inside: bool) -> None:
        if (cls, inside) in seen:
            return
        seen.add((cls, inside))
        if inside:
            found.add(cls)
        for info in msgspec.structs.fields(cls):
            for sub in struct_types(info.type) or []:
                visit(sub, inside)
            for sub in entry_types(info.type) or []:
                visit(sub, True)

    visit(root, False)
    return found


# -- the walk ------------------------------------------------------------------------------
@dataclass
class Report:
    missing: list[str] = field(default_factory=list)
    """Paths of sections and fields the page does not show."""
    not_default: list[str] = field(default_factory=list)
    """Documented values that differ from the code's default (and are not examples)."""
    examples_seen: set[str] = field(default_factory=set)
    shown: dict[type[msgspec.Struct], set[str]] = field(default_factory=dict)
    """Field names shown per Struct, over every place it appears."""


@dataclass
class Walk:
    examples: set[str]
    report: Report = field(default_factory=Report)

    def section(
        self,
        cls: type[msgspec.Struct],
        table: dict[str, Any],
        value: msgspec.Struct,
        default: msgspec.Struct | None,
        path: str,
    ) -> None:
        """A section reached from the top through sections only: every field must be shown,
        and shown with its default."""
        shown = self.report.shown.setdefault(cls, set())
        for info in msgspec.structs.fields(cls):
            key = info.encode_name
            here = f"{path}.{key}" if path else key
            if key not in table:
                self.report.missing.append(here)
                continue
            shown.add(key)
            if here in self.examples:
                self.report.examples_seen.add(here)
            sub = getattr(value, info.name)
            expected = getattr(default, info.name) if default is not None else default_of(info)
            sections = struct_types(info.type)
            if sections is not None:
                if expected is None and here not in self.examples:
                    self.report.not_default.append(f"{here}: documented, but the default is none")
                child = pick(sections, table[key], here)
                child_default = expected if isinstance(expected, msgspec.Struct) else None
                self.section(child, table[key], sub, child_default, here)
                continue
            self.compare(here, sub, expected)
            entries = entry_types(info.type)
            if entries is not None:
                self.entries(entries, table[key], here)

    def compare(self, path: str, value: Any, expected: Any) -> None:
        if expected is msgspec.NODEFAULT:
            return  # required: any documented value will do
        same = msgspec.to_builtins(value) == msgspec.to_builtins(expected)
        if path in self.examples:
            if same:
                self.report.not_default.append(f"{path}: marked as an example but is the default")
        elif not same:
            self.report.not_default.append(f"{path}: documented {value!r}, default {expected!r}")

    def entries(self, candidates: list[type[msgspec.Struct]], container: Any, path: str) -> None:
        items = container.values() if isinstance(container, dict) else container
        for i, entry in enumerate(items):
            self.example(pick(candidates, entry, f"{path}[{i}]"), entry, f"{path}[{i}]")

    def example(self, cls: type[msgspec.Struct], table: dict[str, Any], path: str) -> None:
        """An example entry: its fields count for its Struct; nested tables likewise."""
        shown = self.report.shown.setdefault(cls, set())
        for info in msgspec.structs.fields(cls):
            key = info.encode_name
            if key not in table:
                continue
            shown.add(key)
            sections = struct_types(info.type)
            if sections is not None:
                sub = f"{path}.{key}"
                self.example(pick(sections, table[key], sub), table[key], sub)
            entries = entry_types(info.type)
            if entries is not None:
                self.entries(entries, table[key], f"{path}.{key}")


def walk(
    config: type[msgspec.Struct], table: dict[str, Any], examples: set[str] | None = None
) -> Report:
    value = msgspec.convert(table, config)
    w = Walk(examples or set())
    w.section(config, table, value, None, "")
    for cls in sorted(types_in_entries(config), key=lambda c: c.__name__):
        shown = w.report.shown.get(cls, set())
        for info in msgspec.structs.fields(cls):
            if info.encode_name not in shown:
                w.report.missing.append(f"{cls.__name__}.{info.encode_name} (in no example entry)")
    return w.report


# -- the tests -----------------------------------------------------------------------------
@pytest.mark.parametrize("heading", list(CONFIGS))
def test_documented_file_is_a_valid_configuration(heading: str) -> None:
    try:
        msgspec.convert(documented(heading), CONFIGS[heading])
    except (msgspec.ValidationError, ValueError) as exc:
        pytest.fail(f"the {heading} part of {DOC.name} is not a valid {heading}: {exc}")


@pytest.mark.parametrize("heading", list(CONFIGS))
def test_every_section_and_field_is_documented(heading: str) -> None:
    report = walk(CONFIGS[heading], documented(heading), EXAMPLES[heading])
    assert not report.missing, (
        f"not in the {heading} part of docs/configuration.md (add each with its default and "
        f"what it does): {', '.join(report.missing)}"
    )


@pytest.mark.parametrize("heading", list(CONFIGS))
def test_documented_values_are_the_defaults(heading: str) -> None:
    examples = EXAMPLES[heading]
    report = walk(CONFIGS[heading], documented(heading), examples)
    assert not report.not_default, (
        f"the {heading} part of docs/configuration.md disagrees with the code (fix the page, "
        f"or mark the value as an example there and in EXAMPLES): {'; '.join(report.not_default)}"
    )
    assert report.examples_seen == examples, (
        f"EXAMPLES names paths the page does not show: {sorted(examples - report.examples_seen)}"
    )


# -- the walk itself -----------------------------------------------------------------------
class _Leaf(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rate: float
    burst: int = 1


class _A(msgspec.Struct, tag_field="type", tag="a", forbid_unknown_fields=True):
    x: int = 0


class _B(msgspec.Struct, tag_field="type", tag="b", forbid_unknown_fields=True):
    y: int = 0


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    size: int = 3
    limit: _Leaf = _Leaf(rate=1.0)
    overrides: dict[str, _Leaf] = {}
    actions: dict[str, _A | _B] = {}
    optional: _Leaf | None = None


class _Root(msgspec.Struct, forbid_unknown_fields=True):
    section: _Section = _Section()


def _report(table: dict[str, Any], examples: set[str] | None = None) -> Report:
    return walk(_Root, table, examples)


COMPLETE = {
    "section": {
        "size": 3,
        "limit": {"rate": 1.0, "burst": 1},
        "overrides": {},
        "actions": {"p": {"type": "a", "x": 1}, "q": {"type": "b", "y": 2}},
        "optional": {"rate": 2.0, "burst": 1},
    }
}
COMPLETE_EXAMPLES = {"section.actions", "section.optional"}


@pytest.mark.parametrize(
    ("change", "missing"),
    [
        (lambda t: t["section"].pop("size"), "section.size"),
        (lambda t: t["section"]["limit"].pop("burst"), "section.limit.burst"),
        (lambda t: t["section"].pop("optional"), "section.optional"),
        (lambda t: t["section"]["actions"]["q"].pop("y"), "_B.y (in no example entry)"),
        (lambda t: t["section"]["actions"].pop("q"), "_B.y (in no example entry)"),
    ],
)
def test_the_walk_finds_what_is_missing(
    change: Callable[[dict[str, Any]], object], missing: str
) -> None:
    assert _report(COMPLETE, COMPLETE_EXAMPLES).missing == []
    table = msgspec.json.decode(msgspec.json.encode(COMPLETE))
    change(table)
    assert missing in _report(table, COMPLETE_EXAMPLES).missing


def test_the_walk_finds_values_that_are_not_defaults() -> None:
    assert _report(COMPLETE, COMPLETE_EXAMPLES).not_default == []
    table = msgspec.json.decode(msgspec.json.encode(COMPLETE))
    table["section"]["limit"]["rate"] = 5.0
    report = _report(table, COMPLETE_EXAMPLES)
    assert report.not_default == ["section.limit.rate: documented 5.0, default 1.0"]
    unmarked = _report(COMPLETE, {"section.actions"}).not_default
    assert unmarked == ["section.optional: documented, but the default is none"]
    stale = _report(COMPLETE, {*COMPLETE_EXAMPLES, "section.size"}).not_default
    assert stale == ["section.size: marked as an example but is the default"]
