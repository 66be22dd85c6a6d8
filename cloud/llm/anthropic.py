"""Anthropic Messages: ``POST {base_url}/v1/messages`` with ``stream: true``; SSE events
message_start, content_block_start/delta/stop, message_delta, message_stop, ping and error.

A JSON-schema answer is asked for as one forced tool (``json_answer``, its ``input_schema``
the schema) and its input is streamed back as the answer's text, so the engine sees the same
JSON text from every provider."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from cloud.llm.errors import ErrorKind
from cloud.llm.http import HttpProvider, sse_events
from cloud.llm.openai import tool_call
from cloud.llm.types import Chunk, Done, Request, TextDelta, ToolCallDelta, Usage

API_VERSION = "2023-06-01"
JSON_TOOL = "json_answer"
STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
ERRORS: dict[str, ErrorKind] = {
    "overloaded_error": "server_error",
    "api_error": "server_error",
    "rate_limit_error": "rate_limited",
    "authentication_error": "auth",
    "permission_error": "auth",
    "invalid_request_error": "refused",
    "not_found_error": "refused",
    "request_too_large": "refused",
}


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Message(msgspec.Struct):
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _Block(msgspec.Struct):
    type: str
    id: str = ""
    name: str = ""


class _Delta(msgspec.Struct):
    type: str = ""
    text: str = ""
    partial_json: str = ""
    stop_reason: str | None = None


class _Error(msgspec.Struct):
    type: str = ""
    message: str = ""


class _Event(msgspec.Struct):
    type: str
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _Error | None = None


_decode = msgspec.json.Decoder(_Event).decode


def wire_messages(request: Request) -> list[dict[str, Any]]:
    """Turns in Anthropic's shape: tool results are user turns of ``tool_result`` blocks
    (consecutive ones merged: the roles must alternate), tool calls ``tool_use`` blocks."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}
            last = out[-1] if out else None
            if last and last["role"] == "user" and isinstance(last["content"], list):
                last["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif m.role == "assistant" and m.tool_calls:
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": m.content}] if m.content else []
            )
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in m.tool_calls
            ]
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


class AnthropicProvider(HttpProvider):
    kind = "anthropic"

    def auth_headers(self, key: str) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if key:
            headers["x-api-key"] = key
        return headers

    def body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": wire_messages(request),
            "max_tokens": request.max_tokens or self.max_output_tokens,
            "stream": True,
        }
        if request.system:
            body["system"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        tools = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        if request.json_schema is not None:
            tools.append(
                {
                    "name": JSON_TOOL,
                    "description": "Give the answer as this tool's input.",
                    "input_schema": request.json_schema,
                }
            )
            body["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
        if tools:
            body["tools"] = tools
        return body

    async def stream(self, request: Request) -> AsyncGenerator[Chunk, None]:  # noqa: C901, PLR0912 - one arm per event
        blocks: dict[int, list[str]] = {}  # index -> [kind, id, name, json so far]
        usage = [0, 0]
        stop = "stop"
        finished = False
        async with self.post("/v1/messages", self.body(request), request.timeout) as lines:
            async for _, data in sse_events(lines):
                try:
                    event = _decode(data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise self.fail("malformed", f"event: {exc}") from None
                kind = event.type
                if kind == "content_block_delta" and event.delta is not None:
                    slot = blocks.get(event.index)
                    if event.delta.type == "text_delta":
                        yield TextDelta(event.delta.text)
                    elif event.delta.type == "input_json_delta" and slot is not None:
                        if slot[0] == "answer":
                            yield TextDelta(event.delta.partial_json)
                        else:
                            slot[3] += event.delta.partial_json
                elif kind == "content_block_start" and event.content_block is not None:
                    block = event.content_block
                    if block.type == "tool_use":
                        role = "answer" if block.name == JSON_TOOL else "tool"
                        blocks[event.index] = [role, block.id, block.name, ""]
                elif kind == "content_block_stop":
                    slot = blocks.pop(event.index, None)
                    if slot is not None and slot[0] == "tool":
                        yield ToolCallDelta(tool_call(slot[1], slot[2], slot[3]))
                elif kind == "message_start" and event.message is not None:
                    usage[0] = event.message.usage.input_tokens
                    usage[1] = event.message.usage.output_tokens
                elif kind == "message_delta":
                    if event.delta is not None and event.delta.stop_reason:
                        stop = STOP.get(event.delta.stop_reason, event.delta.stop_reason)
                    if event.usage is not None:
                        usage[1] = event.usage.output_tokens
                elif kind == "message_stop":
                    finished = True
                    break
                elif kind == "error":
                    err = event.error or _Error()
                    raise self.fail(ERRORS.get(err.type, "server_error"), err.message or err.type)
        if not finished:
            raise self.fail("stream_cut", "the stream ended before message_stop")
        if request.json_schema is not None and stop == "tool_calls" and not request.tools:
            stop = "stop"  # the forced answer tool is the answer, not a call to make
        yield Usage(usage[0], usage[1])
        yield Done(stop)
