"""The Ollama adapter against a local server speaking /api/chat NDJSON."""

from __future__ import annotations

from cloud.llm import Done, Message, Request, TextDelta, Tool, ToolCall, ToolCallDelta, Usage
from tests.cloud.llm.support import Sleeps, ask, engine, provider
from tests.cloud.llm.wire import Reply, WireServer, error, ndjson, ollama_lines

NDJSON = "application/x-ndjson"
SET = Tool(
    name="thermostat_set",
    parameters={
        "type": "object",
        "properties": {"value": {"type": "number"}},
        "required": ["value"],
    },
)


def lines(chunks: list[bytes], **kw: object) -> Reply:
    return Reply(chunks=chunks, content_type=NDJSON, **kw)  # type: ignore[arg-type]


async def test_request_shape_and_streamed_text() -> None:
    async with WireServer(lines(ollama_lines(["The ", "sky"], counts=(26, 2)))) as srv:
        eng = engine(provider("ollama", srv.url, key_env=""), planner=False)
        request = Request(
            system="sys",
            messages=(
                Message(role="user", content="set 20"),
                Message(
                    role="assistant",
                    tool_calls=(
                        ToolCall(id="call_0", name="thermostat_set", arguments={"value": 20}),
                    ),
                ),
                Message(role="tool", tool_call_id="call_0", name="thermostat_set", content="done"),
            ),
            tools=(SET,),
            temperature=0,
            max_tokens=64,
            stop=("\n\n",),
            json_schema={"type": "object"},
        )
        chunks = [c async for c in eng.stream(request)]
        await eng.aclose()
    assert chunks == [TextDelta("The "), TextDelta("sky"), Usage(26, 2), Done("stop")]
    seen = srv.seen[0]
    assert seen.path == "/api/chat"
    assert "authorization" not in seen.headers  # a local server takes no key
    body = seen.json()
    assert body["model"] == "ollama-model"
    assert body["stream"] is True
    assert body["options"] == {"num_predict": 64, "temperature": 0, "stop": ["\n\n"]}
    assert body["format"] == {"type": "object"}
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "set 20"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "thermostat_set", "arguments": {"value": 20}}}],
        },
        {"role": "tool", "content": "done", "tool_name": "thermostat_set"},
    ]
    assert body["tools"][0]["function"]["name"] == "thermostat_set"


async def test_tool_calls_come_whole() -> None:
    chunks = ollama_lines(tool_calls=[("thermostat_set", {"value": 21.5})])
    async with WireServer(lines(chunks)) as srv:
        eng = engine(provider("ollama", srv.url, key_env=""), planner=False)
        response = await eng.complete(ask("warmer", tools=(SET,)))
        await eng.aclose()
    assert response.tool_calls == (
        ToolCall(id="call_0", name="thermostat_set", arguments={"value": 21.5}),
    )
    assert response.finish_reason == "tool_calls"
    assert ToolCallDelta(response.tool_calls[0]) in response.chunks()


async def test_an_error_line_and_an_error_status() -> None:
    bad_line = lines(ndjson([{"error": "out of memory"}]))
    missing = error(404, {"error": "model 'nope' not found"})
    async with WireServer(bad_line, missing) as srv:
        eng = engine(provider("ollama", srv.url, key_env="", retries=0))
        first = await eng.complete(ask("?"))
        second = await eng.complete(ask("??"))
        await eng.aclose()
    assert first.fallbacks[0].reason == "server_error"
    assert "out of memory" in first.fallbacks[0].detail
    assert second.fallbacks[0].reason == "refused"
    assert "model 'nope' not found" in second.fallbacks[0].detail


async def test_a_cut_stream_and_a_malformed_line() -> None:
    cut = lines(ollama_lines(["par", "tial"], done=False), cut=True)
    bad = lines([*ollama_lines(["ok"], done=False), b"{oops\n"])
    async with WireServer(cut, lines(ollama_lines(["whole"])), bad) as srv:
        eng = engine(provider("ollama", srv.url, key_env=""), sleeps=Sleeps())
        healed = await eng.complete(ask("?"))
        broken = await eng.complete(ask("??"))
        await eng.aclose()
    assert healed.text == "whole"
    assert healed.provider == "ollama"
    assert broken.fallbacks[0].reason == "malformed"
    assert broken.provider == "planner"


async def test_a_stream_without_done_is_cut() -> None:
    async with WireServer(lines(ollama_lines(["no end"], done=False))) as srv:
        eng = engine(provider("ollama", srv.url, key_env="", retries=0))
        response = await eng.complete(ask("?"))
        await eng.aclose()
    assert response.fallbacks[0].reason == "stream_cut"
