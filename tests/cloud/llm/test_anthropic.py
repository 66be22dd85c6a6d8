"""The Anthropic Messages adapter against a local server speaking its SSE events."""

from __future__ import annotations

import json

import pytest

from cloud.llm import (
    AllProvidersFailed,
    Done,
    Message,
    Request,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from cloud.llm.anthropic import API_VERSION, JSON_TOOL
from tests.cloud.llm.support import KEY, Sleeps, ask, engine, provider
from tests.cloud.llm.wire import Reply, WireServer, anthropic_events, error, sse

LOOKUP = Tool(
    name="lookup",
    description="find a device",
    parameters={"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
)


def stream(events: list[dict[str, object]], **kw: object) -> Reply:
    return Reply(chunks=sse(events, named=True), **kw)  # type: ignore[arg-type]


async def test_request_shape_and_streamed_text() -> None:
    async with WireServer(stream(anthropic_events(["Hi", " there"], usage=(30, 4)))) as srv:
        eng = engine(provider("anthropic", srv.url), planner=False)
        request = Request(
            system="you are terse",
            messages=(
                Message(role="user", content="find sensor-1 and sensor-2"),
                Message(
                    role="assistant",
                    content="looking",
                    tool_calls=(
                        ToolCall(id="t1", name="lookup", arguments={"id": "sensor-1"}),
                        ToolCall(id="t2", name="lookup", arguments={"id": "sensor-2"}),
                    ),
                ),
                Message(role="tool", tool_call_id="t1", content="zone A"),
                Message(role="tool", tool_call_id="t2", content="zone B"),
            ),
            tools=(LOOKUP,),
            temperature=0.2,
            stop=("STOP",),
        )
        chunks = [c async for c in eng.stream(request)]
        await eng.aclose()
    assert chunks == [TextDelta("Hi"), TextDelta(" there"), Usage(30, 4), Done("stop")]
    seen = srv.seen[0]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == KEY
    assert seen.headers["anthropic-version"] == API_VERSION
    assert "authorization" not in seen.headers
    body = seen.json()
    assert body["system"] == "you are terse"
    assert body["max_tokens"] == 1024
    assert body["stream"] is True
    assert body["stop_sequences"] == ["STOP"]
    assert body["tools"] == [
        {"name": "lookup", "description": "find a device", "input_schema": LOOKUP.parameters}
    ]
    assert body["messages"] == [
        {"role": "user", "content": "find sensor-1 and sensor-2"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "looking"},
                {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"id": "sensor-1"}},
                {"type": "tool_use", "id": "t2", "name": "lookup", "input": {"id": "sensor-2"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "zone A"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "zone B"},
            ],
        },
    ]


async def test_tool_use_input_is_assembled() -> None:
    events = anthropic_events(
        ["Let me look."], tool_uses=[("toolu_1", "lookup", ['{"id"', ': "s-7"}'])]
    )
    async with WireServer(stream(events)) as srv:
        eng = engine(provider("anthropic", srv.url), planner=False)
        chunks = [c async for c in eng.stream(ask("where is s-7", tools=(LOOKUP,)))]
        await eng.aclose()
    assert ToolCallDelta(ToolCall(id="toolu_1", name="lookup", arguments={"id": "s-7"})) in chunks
    assert chunks[-1] == Done("tool_calls")


async def test_a_schema_answer_comes_from_the_forced_tool() -> None:
    answer = ['{"label": "valve.close", ', '"confidence": 0.9, "reason": "valve"}']
    events = anthropic_events(tool_uses=[("toolu_2", JSON_TOOL, answer)])
    async with WireServer(stream(events)) as srv:
        eng = engine(provider("anthropic", srv.url), planner=False)
        result = await eng.run_task(
            "classify", {"text": "shut the valve", "labels": ["valve.close", "fan.on"]}
        )
        await eng.aclose()
    assert result.value == {"label": "valve.close", "confidence": 0.9, "reason": "valve"}
    assert result.provider == "anthropic"
    body = srv.seen[0].json()
    assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
    assert body["tools"][0]["name"] == JSON_TOOL
    assert body["tools"][0]["input_schema"]["properties"]["label"]["enum"] == [
        "valve.close",
        "fan.on",
        None,
    ]
    assert body["temperature"] == 0
    assert "shut the valve" in body["messages"][0]["content"]


async def test_an_overloaded_error_event_is_retried() -> None:
    sleeps = Sleeps()
    overloaded = stream(
        [
            anthropic_events()[0],
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        ]
    )
    async with WireServer(overloaded, stream(anthropic_events(["fine"]))) as srv:
        eng = engine(provider("anthropic", srv.url), sleeps=sleeps, planner=False)
        response = await eng.complete(ask("hi"))
        await eng.aclose()
    assert response.text == "fine"
    assert len(sleeps.waits) == 1


async def test_429_with_retry_after_and_529() -> None:
    sleeps = Sleeps()
    limited = error(
        429,
        {"type": "error", "error": {"type": "rate_limit_error", "message": "rate limited"}},
        {"retry-after": "2"},
    )
    overloaded = error(
        529, {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
    )
    async with WireServer(limited, overloaded, stream(anthropic_events(["ok"]))) as srv:
        eng = engine(provider("anthropic", srv.url), sleeps=sleeps, planner=False)
        response = await eng.complete(ask("hi"))
        await eng.aclose()
    assert response.text == "ok"
    assert sleeps.waits[0] >= 2
    assert len(srv.seen) == 3


async def test_an_invalid_request_error_is_refused_with_its_message() -> None:
    bad = error(
        400,
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: too big"},
        },
    )
    async with WireServer(bad) as srv:
        eng = engine(provider("anthropic", srv.url), planner=False)
        with pytest.raises(AllProvidersFailed, match="max_tokens: too big"):
            await eng.complete(ask("hi"))
        await eng.aclose()
    assert len(srv.seen) == 1


async def test_a_stream_cut_before_message_stop() -> None:
    events = anthropic_events(["half an ans"], end=False)[:4]
    async with WireServer(stream(events, cut=True), stream(anthropic_events(["whole"]))) as srv:
        eng = engine(provider("anthropic", srv.url), sleeps=Sleeps(), planner=False)
        response = await eng.complete(ask("?"))
        await eng.aclose()
    assert response.text == "whole"
    assert len(srv.seen) == 2


async def test_a_stream_that_ends_without_message_stop_is_cut() -> None:
    events = anthropic_events(["never ends"], end=False)
    async with WireServer(stream(events)) as srv:
        eng = engine(provider("anthropic", srv.url, retries=0))
        response = await eng.complete(ask("?"))
        await eng.aclose()
    assert response.fallbacks[0].reason == "stream_cut"
    assert response.provider == "planner"


async def test_a_malformed_event() -> None:
    bad = Reply(chunks=[b"event: content_block_delta\ndata: {not json\n\n"])
    async with WireServer(bad) as srv:
        eng = engine(provider("anthropic", srv.url))
        response = await eng.complete(ask("?"))
        await eng.aclose()
    assert response.fallbacks[0].reason == "malformed"
    assert json.loads(json.dumps(response.text))  # the planner's text
