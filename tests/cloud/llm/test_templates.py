"""Prompt templates are package files, one per task, and every placeholder is filled."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from importlib import resources

import pytest

from cloud.llm.answers import task_request
from cloud.llm.http import error_detail, parse_retry_after, status_kind
from cloud.llm.tasks import TASKS
from cloud.llm.templates import system_prompt

DATA = {
    "classify": {"text": "leak", "labels": ["valve.close"]},
    "decompose": {"goal": "close the valve", "capabilities": ["valve.close"]},
    "mitigate": {"kind": "flood", "device": "s-1", "rate_per_s": 9},
    "review_policy": {"source": "rule a when temp > 1 then flag"},
}


@pytest.mark.parametrize("name", [*TASKS, "system"])
def test_each_template_is_a_file_in_the_package(name: str) -> None:
    path = resources.files("cloud.llm").joinpath("prompts", f"{name}.txt")
    assert path.is_file()
    assert path.read_text("utf-8").strip()


@pytest.mark.parametrize("name", list(TASKS))
def test_a_rendered_prompt_has_no_placeholder_left(name: str) -> None:
    request, _ = task_request(name, DATA[name])
    prompt = request.messages[0].content
    assert not re.search(r"\$[a-z_]+", prompt), prompt
    assert request.system == system_prompt()
    assert request.temperature == 0
    for value in DATA[name].values():
        if isinstance(value, str):
            assert value in prompt


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "12"}) == 12
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    later = datetime.now(UTC) + timedelta(seconds=30)
    waited = parse_retry_after({"retry-after": format_datetime(later, usegmt=True)})
    assert waited is not None
    assert 25 < waited <= 30
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_status_kinds_and_error_bodies() -> None:
    assert [status_kind(s) for s in (429, 401, 403, 408, 400, 404, 500, 529)] == [
        "rate_limited",
        "auth",
        "auth",
        "timeout",
        "refused",
        "refused",
        "server_error",
        "server_error",
    ]
    assert error_detail(b'{"error": {"message": "m1"}}') == "m1"
    assert error_detail(b'{"error": "m2"}') == "m2"
    assert error_detail(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
