"""Answers checked before anything acts on them: JSON against its schema, tool calls against
their tools' parameter schemas (fastjsonschema, each schema compiled once)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import fastjsonschema
import msgspec

from cloud.llm.types import Request, Response

_decode = msgspec.json.Decoder().decode


@functools.lru_cache(maxsize=512)
def _compiled(schema_json: bytes) -> Callable[[Any], Any]:
    validator: Callable[[Any], Any] = fastjsonschema.compile(_decode(schema_json))
    return validator


def validator(schema: dict[str, Any]) -> Callable[[Any], Any]:
    return _compiled(msgspec.json.encode(schema))


def check_value(value: Any, schema: dict[str, Any]) -> str:
    """ "" when ``value`` matches ``schema``, else the first error."""
    try:
        validator(schema)(value)
    except fastjsonschema.JsonSchemaValueException as exc:
        return str(exc.message)
    return ""


def check_answer(request: Request, response: Response) -> tuple[Any, str]:
    """(the decoded JSON answer or None, "" or what is wrong) for a response to ``request``."""
    if request.tools and response.tool_calls:
        return None, check_tool_calls(request, response)
    if request.json_schema is None:
        return None, ""
    text = response.text.strip()
    if text.startswith("```"):  # some models fence their JSON
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = _decode(text)
    except msgspec.DecodeError as exc:
        return None, f"the answer is not JSON ({exc})"
    error = check_value(value, request.json_schema)
    return (None, error) if error else (value, "")


def check_tool_calls(request: Request, response: Response) -> str:
    tools = {t.name: t for t in request.tools}
    for call in response.tool_calls:
        tool = tools.get(call.name)
        if tool is None:
            return f"tool call {call.name!r}: no such tool (tools: {', '.join(tools)})"
        if call.error:
            return f"tool call {call.name!r}: {call.error}"
        error = check_value(call.arguments, tool.parameters)
        if error:
            return f"tool call {call.name!r}: {error}"
    return ""
