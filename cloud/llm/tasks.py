"""The engine's structured requests: what each takes, the schema its answer must match, and
the checks beyond the schema (a proposed policy must compile) that any answer passes.

The data is checked like a person's input (msgspec Structs: a wrong field is a
:class:`TaskDataError` naming it). Schemas are built from the data (a label must be one of
the labels given), so an answer naming something that was not offered fails validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from cloud.llm.errors import TaskDataError
from wasm.errors import PolicySyntaxError
from wasm.parser import parse


class Label(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    keywords: tuple[str, ...] = ()
    description: str = ""


class ClassifyData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: str
    labels: tuple[str | Label, ...]


class Capability(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    description: str = ""


class DecomposeData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    goal: str
    capabilities: tuple[str | Capability, ...]


class AnomalyData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: str
    device: str = ""
    gateway: str = ""
    zone: str = ""
    metric: str = ""
    value: float | None = None
    threshold: float | None = None
    rate_per_s: float | None = None
    limit_per_s: float | None = None


class PolicyData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    source: str


def label_names(data: ClassifyData) -> list[str]:
    return [x if isinstance(x, str) else x.name for x in data.labels]


def capability_names(data: DecomposeData) -> list[str]:
    return [x if isinstance(x, str) else x.name for x in data.capabilities]


def _obj(**props: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


_STR = {"type": "string"}


def classify_schema(data: ClassifyData) -> dict[str, Any]:
    return _obj(
        label={"enum": [*label_names(data), None]},
        confidence={"type": "number", "minimum": 0, "maximum": 1},
        reason=_STR,
    )


def decompose_schema(data: DecomposeData) -> dict[str, Any]:
    step = _obj(capability={"enum": [*capability_names(data), None]}, instruction=_STR)
    return _obj(steps={"type": "array", "items": step}, unmatched={"type": "array", "items": _STR})


ACTIONS = ("rate_limit", "drop_readings", "flag_readings", "quarantine", "notify")
SEVERITIES = ("info", "warning", "critical")


def mitigate_schema(_: AnomalyData) -> dict[str, Any]:
    return _obj(
        action={"enum": list(ACTIONS)},
        target=_obj(gateway=_STR, device=_STR, zone=_STR),
        rate_per_s={"type": ["number", "null"], "exclusiveMinimum": 0},
        policy=_STR,
        reason=_STR,
        severity={"enum": list(SEVERITIES)},
    )


def review_schema(_: PolicyData) -> dict[str, Any]:
    finding = _obj(severity={"enum": ["info", "warning", "error"]}, rule=_STR, message=_STR)
    return _obj(
        verdict={"enum": ["approve", "revise", "reject"]},
        findings={"type": "array", "items": finding},
    )


def check_mitigation(answer: dict[str, Any]) -> str:
    """A proposed policy must compile, as one a person wrote would have to."""
    source = answer.get("policy") or ""
    if not source:
        return ""
    try:
        parse(source, "<proposed policy>")
    except PolicySyntaxError as exc:
        return f"the proposed policy does not compile: {exc}"
    return ""


def _no_check(_: dict[str, Any]) -> str:
    return ""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    data_type: type[msgspec.Struct]
    schema: Callable[[Any], dict[str, Any]]
    check: Callable[[dict[str, Any]], str] = _no_check
    """Checks beyond the schema; "" when the answer passes, else what is wrong."""

    def parse(self, data: dict[str, Any]) -> Any:
        try:
            return msgspec.convert(data, self.data_type)
        except msgspec.ValidationError as exc:
            raise TaskDataError(self.name, str(exc)) from None


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("classify", ClassifyData, classify_schema),
        TaskSpec("decompose", DecomposeData, decompose_schema),
        TaskSpec("mitigate", AnomalyData, mitigate_schema, check_mitigation),
        TaskSpec("review_policy", PolicyData, review_schema),
    )
}


def spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise TaskDataError(name, f"no such task (tasks: {', '.join(TASKS)})") from None
