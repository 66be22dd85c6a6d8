"""Ollama's native ``POST {base_url}/api/chat`` with ``stream: true``: one JSON object a line
(NDJSON), the last with ``done: true`` and the token counts. Tool calls come whole, with their
arguments as an object and no id (one is made: ``call_N``); a JSON schema goes in ``format``."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from cloud.llm.http import HttpProvider
from cloud.llm.types import Chunk, Done, Request, TextDelta, ToolCall, ToolCallDelta, Usage

DONE = {"stop": "stop", "length": "length"}


class _Fn(msgspec.Struct):
    name: str
    arguments: dict[str, Any] = {}


class _Call(msgspec.Struct):
    function: _Fn


class _Msg(msgspec.Struct):
    content: str = ""
    tool_calls: list[_Call] | None = None


class _Line(msgspec.Struct):
    message: _Msg | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int = 0
    eval_count: int = 0
    error: str | None = None


_decode = msgspec.json.Decoder(_Line).decode


def wire_messages(request: Request) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for m in request.messages:
        doc: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            doc["tool_calls"] = [
                {"function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls
            ]
        if m.role == "tool" and m.name:
            doc["tool_name"] = m.name
        out.append(doc)
    return out


class OllamaProvider(HttpProvider):
    kind = "ollama"

    def body(self, request: Request) -> dict[str, Any]:
        options: dict[str, Any] = {"num_predict": request.max_tokens or self.max_output_tokens}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.stop:
            options["stop"] = list(request.stop)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": wire_messages(request),
            "stream": True,
            "options": options,
        }
        if request.json_schema is not None:
            body["format"] = request.json_schema
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
        return body

    async def stream(self, request: Request) -> AsyncGenerator[Chunk, None]:
        calls = 0
        async with self.post("/api/chat", self.body(request), request.timeout) as lines:
            async for line in lines:
                if not line.strip():
                    continue
                try:
                    doc = _decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise self.fail("malformed", f"line: {exc}") from None
                if doc.error:
                    raise self.fail("server_error", doc.error)
                if doc.message is not None:
                    if doc.message.content:
                        yield TextDelta(doc.message.content)
                    for call in doc.message.tool_calls or ():
                        fn = call.function
                        yield ToolCallDelta(
                            ToolCall(id=f"call_{calls}", name=fn.name, arguments=fn.arguments)
                        )
                        calls += 1
                if doc.done:
                    reason = "tool_calls" if calls else DONE.get(doc.done_reason or "stop", "stop")
                    yield Usage(doc.prompt_eval_count, doc.eval_count)
                    yield Done(reason)
                    return
        raise self.fail("stream_cut", "the stream ended before done: true")
