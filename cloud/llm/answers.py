"""Answers checked before anything acts on them, and the requests that ask for them.

An answer that fails its schema (or its task's own check) is sent back once with the error
(:func:`retry_request`); a second failure is refused by the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from cloud.llm import tasks
from cloud.llm.templates import render, system_prompt
from cloud.llm.types import Fallback, Message, Request, Response, Task
from cloud.llm.validate import check_answer

Check = Callable[[dict[str, Any]], str]


class TaskAnswer(msgspec.Struct, kw_only=True):
    """A structured request's answer, validated, and who gave it."""

    value: dict[str, Any]
    provider: str
    fallbacks: tuple[Fallback, ...] = ()
    cached: bool = False


def no_check(_: dict[str, Any]) -> str:
    return ""


def task_request(name: str, data: dict[str, Any]) -> tuple[Request, tasks.TaskSpec]:
    """The request for a structured task: its data checked, its prompt from the template
    files, its answer's schema built from the data, temperature 0 (cacheable)."""
    task = tasks.spec(name)
    schema = task.schema(task.parse(data))
    request = Request(
        system=system_prompt(),
        messages=(Message(role="user", content=render(name, data)),),
        json_schema=schema,
        temperature=0,
        task=Task(name=name, data=data),
    )
    return request, task


def validate(request: Request, response: Response, check: Check) -> tuple[Any, str]:
    """(the decoded answer, "" or what is wrong with it)."""
    value, error = check_answer(request, response)
    if not error and isinstance(value, dict):
        error = check(value)
    return value, error


def retry_request(request: Request, response: Response, error: str) -> Request:
    """The request again, with the refused answer and why it was refused."""
    return msgspec.structs.replace(
        request,
        messages=(
            *request.messages,
            Message(role="assistant", content=response.text, tool_calls=response.tool_calls),
            Message(
                role="user",
                content=f"Your answer was refused: {error}. Answer again; it must match "
                "the schema exactly.",
            ),
        ),
    )
