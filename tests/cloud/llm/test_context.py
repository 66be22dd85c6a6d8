"""Context-window budgeting: the system prompt and the newest turns stay, whole turns go
oldest first, a tool result is never cut nor left without its call."""

from __future__ import annotations

import pytest

from cloud.llm import ContextTooLarge, Message, Request, ToolCall
from cloud.llm.chain import build_provider
from cloud.llm.context import fit, turns
from cloud.llm.tokens import BYTES_PER_TOKEN, estimate, request_tokens
from tests.cloud.llm.support import ENV, engine, provider
from tests.cloud.llm.wire import Reply, WireServer, openai_chunks

SYSTEM = "You are the fleet's planner. " * 4


def history(n: int) -> tuple[Message, ...]:
    """``n`` exchanges, each a question, a tool call, its (long) result and an answer."""
    out: list[Message] = []
    for i in range(n):
        call = ToolCall(id=f"c{i}", name="lookup", arguments={"i": i})
        out += [
            Message(role="user", content=f"question {i}: " + "word " * 20),
            Message(role="assistant", tool_calls=(call,)),
            Message(role="tool", tool_call_id=f"c{i}", content=f"result {i}: " + "x" * 300),
            Message(role="assistant", content=f"answer {i}"),
        ]
    return tuple(out)


def small(window: int = 600, max_output: int = 100):
    return build_provider(
        provider(
            "openai", "http://127.0.0.1:9", context_window=window, max_output_tokens=max_output
        ),
        environ=ENV,
    )


def test_the_estimate_is_conservative() -> None:
    assert estimate("abc") == 1
    assert estimate("abcd") == 2
    assert estimate("é" * 3) == 2  # bytes, not characters
    assert BYTES_PER_TOKEN == 3


def test_a_request_that_fits_is_left_alone() -> None:
    request = Request(system=SYSTEM, messages=history(1))
    assert fit(request, small(window=4096)) is request


def test_trimming_keeps_the_system_prompt_and_the_newest_turns() -> None:
    p = small()
    request = Request(system=SYSTEM, messages=history(6))
    trimmed = fit(request, p)
    assert trimmed.system == SYSTEM
    assert request_tokens(trimmed, p.kind) <= p.context_window - p.max_output_tokens
    kept = trimmed.messages
    assert kept[0].role == "user"
    assert kept[0].content.startswith("[")  # the note in place of the dropped turns
    assert "earlier messages were left out" in kept[0].content
    assert 'the first began: "question 0' in kept[0].content
    assert kept[-1] == request.messages[-1]  # the newest turn
    body = kept[1:]
    assert body == request.messages[len(request.messages) - len(body) :]  # a suffix, in order
    # every tool result is whole and follows its call
    calls = {c.id for m in body for c in m.tool_calls}
    for m in body:
        if m.role == "tool":
            assert m.tool_call_id in calls
            assert m.content == next(
                x.content for x in request.messages if x.tool_call_id == m.tool_call_id
            )


def test_a_tool_result_is_never_split_from_its_call() -> None:
    p = small(window=400)
    request = Request(messages=history(3))
    trimmed = fit(request, p)
    first_real = next(m for m in trimmed.messages if not m.content.startswith("["))
    assert first_real.role != "tool"
    ids = [m.tool_call_id for m in trimmed.messages if m.role == "tool"]
    called = [c.id for m in trimmed.messages for c in m.tool_calls]
    assert ids == [i for i in called if i in ids]
    assert set(ids) <= set(called)


def test_turns_group_tool_results_with_their_call() -> None:
    groups = turns(history(2))
    assert [[m.role for m in g] for g in groups] == [
        ["user"],
        ["assistant", "tool"],
        ["assistant"],
        ["user"],
        ["assistant", "tool"],
        ["assistant"],
    ]


def test_when_the_newest_turn_alone_is_too_big() -> None:
    p = small(window=256, max_output=100)
    request = Request(system=SYSTEM, messages=(Message(role="user", content="y" * 2000),))
    with pytest.raises(ContextTooLarge) as info:
        fit(request, p)
    assert info.value.window == 256
    assert info.value.needed > 256


async def test_the_provider_sees_the_trimmed_history_and_a_small_window_falls_back() -> None:
    async with WireServer(Reply(chunks=openai_chunks(["ok"]))) as srv:
        eng = engine(
            provider("openai", srv.url, name="tiny", context_window=256, max_output_tokens=250),
            provider("openai", srv.url, name="roomy", context_window=700, max_output_tokens=100),
        )
        response = await eng.complete(Request(system=SYSTEM, messages=history(8)))
        await eng.aclose()
    assert response.provider == "roomy"
    assert response.fallbacks[0].reason == "context"
    sent = srv.seen[0].json()["messages"]
    assert sent[0] == {"role": "system", "content": SYSTEM}
    assert sent[-1] == {"role": "assistant", "content": "answer 7"}
    assert len(sent) < 8 * 4
