"""OpenAI-compatible chat completions (OpenAI, vLLM, llama.cpp's server, LM Studio, Ollama's
``/v1``): ``POST {base_url}/chat/completions`` with ``stream: true``, SSE chunks up to
``data: [DONE]``; tool calls arrive as argument fragments by index and are assembled here."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from cloud.llm.http import HttpProvider, sse_events
from cloud.llm.types import (
    Chunk,
    Done,
    Message,
    Request,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


class _Fn(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Fn | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolDelta] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Error(msgspec.Struct):
    message: str = ""
    type: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: _Error | None = None


_decode = msgspec.json.Decoder(_Chunk).decode
_args = msgspec.json.Decoder().decode


def wire_messages(request: Request) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    out.extend(_message(m) for m in request.messages)
    return out


def _message(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    doc: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        doc["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": msgspec.json.encode(c.arguments).decode(),
                },
            }
            for c in m.tool_calls
        ]
    return doc


def tool_call(call_id: str, name: str, raw: str) -> ToolCall:
    """A tool call from its JSON argument text; bad JSON is kept as the call's error."""
    try:
        args = _args(raw or "{}")
    except msgspec.DecodeError as exc:
        return ToolCall(id=call_id, name=name, error=f"arguments are not JSON: {exc}")
    if not isinstance(args, dict):
        return ToolCall(id=call_id, name=name, error="arguments are not a JSON object")
    return ToolCall(id=call_id, name=name, arguments=args)


class OpenAIProvider(HttpProvider):
    kind = "openai"

    def body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": wire_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_tokens or self.max_output_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        if request.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.json_schema, "strict": True},
            }
        return body

    async def stream(self, request: Request) -> AsyncGenerator[Chunk, None]:
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
        finish: str | None = None
        usage = Usage()
        async with self.post("/chat/completions", self.body(request), request.timeout) as lines:
            async for _, data in sse_events(lines):
                if data.strip() == "[DONE]":
                    break
                chunk = self._decode(data)
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield TextDelta(choice.delta.content)
                    _gather(calls, choice.delta.tool_calls)
                    finish = choice.finish_reason or finish
            else:
                if finish is None:
                    raise self.fail("stream_cut", "the stream ended before [DONE]")
        for index in sorted(calls):
            call_id, name, raw = calls[index]
            yield ToolCallDelta(tool_call(call_id or f"call_{index}", name, raw))
        yield usage
        yield Done(FINISH.get(finish or "stop", finish or "stop"))

    def _decode(self, data: str) -> _Chunk:
        try:
            chunk = _decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self.fail("malformed", f"chunk: {exc}") from None
        if chunk.error is not None:
            raise self.fail("server_error", chunk.error.message or str(chunk.error.type))
        return chunk


def _gather(calls: dict[int, list[str]], parts: list[_ToolDelta] | None) -> None:
    """Add tool-call fragments to the calls being assembled, by index."""
    for part in parts or ():
        slot = calls.setdefault(part.index, ["", "", ""])
        if part.id:
            slot[0] = part.id
        if part.function is not None:
            slot[1] += part.function.name or ""
            slot[2] += part.function.arguments or ""
