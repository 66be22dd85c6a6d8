"""Prompt templates: text files in ``cloud/llm/prompts/`` (shipped in the wheel), read once.

A template is :class:`string.Template` text; ``$name`` is replaced by that field of the task's
data, JSON-encoded when it is not a string. ``system.txt`` is the system prompt of every
structured request.
"""

from __future__ import annotations

import functools
from importlib import resources
from string import Template
from typing import Any

import msgspec

PACKAGE = "cloud.llm"


@functools.cache
def template(name: str) -> Template:
    return Template(resources.files(PACKAGE).joinpath("prompts", f"{name}.txt").read_text("utf-8"))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.format(msgspec.json.encode(value), indent=1).decode()


def render(name: str, data: dict[str, Any]) -> str:
    """The template ``name`` with the task's data put in (``$anomaly``: the whole data)."""
    fields = {k: _text(v) for k, v in data.items()}
    fields.setdefault("anomaly", _text(data))
    return template(name).safe_substitute(fields)


def system_prompt() -> str:
    return template("system").template.strip()
