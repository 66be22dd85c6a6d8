"""The OpenAI-compatible adapter against a local server speaking chat completions SSE."""

from __future__ import annotations

import json

import pytest

from cloud.llm import (
    AllProvidersFailed,
    Done,
    Message,
    Request,
    Restart,
    TextDelta,
    Tool,
    ToolCall,
    Usage,
)
from tests.cloud.llm.support import KEY, Sleeps, ask, engine, provider
from tests.cloud.llm.wire import Reply, WireServer, error, openai_chunks, sse

WEATHER = Tool(
    name="get_weather",
    description="the weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


async def test_request_shape_and_streamed_text() -> None:
    async with WireServer(Reply(chunks=openai_chunks(["Hel", "lo", "!"], usage=(11, 3)))) as srv:
        eng = engine(provider("openai", srv.url + "/v1"), planner=False)
        request = Request(
            system="be brief",
            messages=(
                Message(role="user", content="hi"),
                Message(
                    role="assistant",
                    tool_calls=(ToolCall(id="c1", name="get_weather", arguments={"city": "Oslo"}),),
                ),
                Message(role="tool", tool_call_id="c1", content="-3 C"),
            ),
            tools=(WEATHER,),
            temperature=0.5,
            max_tokens=50,
            stop=("END",),
        )
        chunks = [c async for c in eng.stream(request)]
        await eng.aclose()
    assert chunks == [
        TextDelta("Hel"),
        TextDelta("lo"),
        TextDelta("!"),
        Usage(11, 3),
        Done("stop"),
    ]
    seen = srv.seen[0]
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    body = seen.json()
    assert body["model"] == "openai-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["max_tokens"], body["stop"]) == (0.5, 50, ["END"])
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "-3 C"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "the weather in a city",
                "parameters": WEATHER.parameters,
            },
        }
    ]


async def test_tool_call_fragments_are_assembled_and_validated() -> None:
    stream = openai_chunks(tool_calls=[("call_9", "get_weather", ['{"ci', 'ty": "Ber', 'gen"}'])])
    async with WireServer(Reply(chunks=stream)) as srv:
        eng = engine(provider("openai", srv.url), planner=False)
        response = await eng.complete(ask("weather?", tools=(WEATHER,)))
        await eng.aclose()
    assert response.tool_calls == (
        ToolCall(id="call_9", name="get_weather", arguments={"city": "Bergen"}),
    )
    assert response.finish_reason == "tool_calls"


async def test_json_schema_goes_as_response_format() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    async with WireServer(Reply(chunks=openai_chunks(['{"n": ', "4}"]))) as srv:
        eng = engine(provider("openai", srv.url), planner=False)
        response = await eng.complete(ask("2+2?", json_schema=schema, temperature=0))
        await eng.aclose()
    assert json.loads(response.text) == {"n": 4}
    assert srv.seen[0].json()["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


async def test_429_is_retried_after_retry_after() -> None:
    sleeps = Sleeps()
    limited = error(429, {"error": {"message": "slow down"}}, {"Retry-After": "7"})
    async with WireServer(limited, Reply(chunks=openai_chunks(["ok"]))) as srv:
        eng = engine(provider("openai", srv.url), sleeps=sleeps, planner=False)
        response = await eng.complete(ask("hi"))
        await eng.aclose()
    assert response.text == "ok"
    assert len(srv.seen) == 2
    assert len(sleeps.waits) == 1
    assert sleeps.waits[0] >= 7.0
    assert response.fallbacks == ()
    assert (
        eng.recorder.registry.get_sample_value(
            "cybernetic_llm_retries_total", {"provider": "openai", "reason": "rate_limited"}
        )
        == 1
    )


async def test_retry_after_too_long_falls_back_at_once() -> None:
    sleeps = Sleeps()
    limited = error(429, {"error": {"message": "quota"}}, {"Retry-After": "3600"})
    async with WireServer(limited) as srv:
        eng = engine(provider("openai", srv.url), sleeps=sleeps)
        response = await eng.complete(ask("hi"))
        await eng.aclose()
    assert response.provider == "planner"
    assert [(f.provider, f.reason) for f in response.fallbacks] == [("openai", "rate_limited")]
    assert sleeps.waits == []
    assert len(srv.seen) == 1


async def test_server_errors_are_retried_then_fall_back_with_the_reason() -> None:
    sleeps = Sleeps()
    boom = error(503, {"error": {"message": "overloaded"}})
    async with WireServer(boom, boom, boom) as srv:
        eng = engine(provider("openai", srv.url, retries=2), sleeps=sleeps)
        response = await eng.complete(ask("hi"))
        await eng.aclose()
    assert len(srv.seen) == 3
    assert len(sleeps.waits) == 2
    assert response.provider == "planner"
    (fallback,) = response.fallbacks
    assert (fallback.provider, fallback.reason) == ("openai", "server_error")
    assert "503" in fallback.detail
    assert "overloaded" in fallback.detail


async def test_a_bad_request_is_not_retried() -> None:
    sleeps = Sleeps()
    async with WireServer(error(400, {"error": {"message": "bad model"}})) as srv:
        eng = engine(provider("openai", srv.url), sleeps=sleeps, planner=False)
        with pytest.raises(AllProvidersFailed) as info:
            await eng.complete(ask("hi"))
        await eng.aclose()
    assert len(srv.seen) == 1
    assert sleeps.waits == []
    assert info.value.fallbacks[0].reason == "refused"
    assert "bad model" in str(info.value)


async def test_a_stream_cut_mid_way_restarts_the_answer() -> None:
    sleeps = Sleeps()
    cut = Reply(chunks=openai_chunks(["The ans", "wer is"])[:3], cut=True)
    async with WireServer(cut, Reply(chunks=openai_chunks(["42"]))) as srv:
        eng = engine(provider("openai", srv.url), sleeps=sleeps, planner=False)
        chunks = [c async for c in eng.stream(ask("?"))]
        await eng.aclose()
    texts = [c for c in chunks if isinstance(c, TextDelta | Restart)]
    assert texts[:2] == [TextDelta("The ans"), TextDelta("wer is")]
    assert isinstance(texts[2], Restart)
    assert texts[2].reason == "openai: stream_cut"
    assert texts[3] == TextDelta("42")
    assert chunks[-1] == Done("stop")
    assert len(srv.seen) == 2
    assert len(sleeps.waits) == 1


async def test_a_stream_cut_in_complete_keeps_only_the_new_answer() -> None:
    cut = Reply(chunks=openai_chunks(["wrong ", "half"])[:2], cut=True)
    async with WireServer(cut, Reply(chunks=openai_chunks(["right"]))) as srv:
        eng = engine(provider("openai", srv.url), sleeps=Sleeps(), planner=False)
        response = await eng.complete(ask("?"))
        await eng.aclose()
    assert response.text == "right"


async def test_a_stream_without_done_or_finish_is_cut() -> None:
    chunks = openai_chunks(["partial"], usage=None, done=False)[:2]  # no finish, no [DONE]
    async with WireServer(Reply(chunks=chunks)) as srv:
        eng = engine(provider("openai", srv.url, retries=0))
        response = await eng.complete(ask("?"))
        await eng.aclose()
    assert response.fallbacks[0].reason == "stream_cut"


async def test_a_malformed_chunk_falls_back_without_retrying() -> None:
    bad = Reply(chunks=[*openai_chunks(["fine"])[:2], *sse(['{"choices": [{"delta": 5}]}'])])
    async with WireServer(bad) as srv:
        eng = engine(provider("openai", srv.url), sleeps=Sleeps())
        response = await eng.complete(ask("?"))
        await eng.aclose()
    assert len(srv.seen) == 1
    assert response.provider == "planner"
    assert response.fallbacks[0].reason == "malformed"
    assert "planner" in response.text


async def test_an_error_inside_the_stream() -> None:
    bad = Reply(chunks=sse([{"error": {"message": "model crashed", "type": "server_error"}}]))
    async with WireServer(bad) as srv:
        eng = engine(provider("openai", srv.url, retries=0))
        response = await eng.complete(ask("?"))
        await eng.aclose()
    assert response.fallbacks[0].reason == "server_error"
    assert "model crashed" in response.fallbacks[0].detail


async def test_a_read_timeout_is_a_timeout() -> None:
    slow = Reply(chunks=openai_chunks(["late"]), delay=0.5)
    async with WireServer(slow) as srv:
        eng = engine(provider("openai", srv.url, retries=0, timeout_s=0.1))
        response = await eng.complete(ask("?"))
        await eng.aclose()
    assert response.fallbacks[0].reason == "timeout"
