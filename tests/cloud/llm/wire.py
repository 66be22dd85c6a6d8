"""A small HTTP/1.1 server for the LLM tests, speaking each provider's wire format byte for byte.

Each test scripts the replies (status, headers, body chunks, a cut, a delay) and reads back
the requests the engine sent (method, path, headers, JSON body). Streaming bodies are sent
with chunked transfer encoding, as the providers do; ``cut=True`` closes the connection in
the middle of the body, without the closing chunk. The server runs on the test's own event
loop (:class:`WireServer`) or on a thread of its own (:class:`ThreadedWireServer`, for a
subprocess of the CLI).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    chunks: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    cut: bool = False
    """Close the connection after the chunks, without ending the body."""
    delay: float = 0.0
    """Seconds before each chunk."""
    content_type: str = "text/event-stream"


Script = Reply | Callable[[Seen], Reply]


def error(status: int, doc: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, [json.dumps(doc).encode()], headers or {}, content_type="application/json")


class WireServer:
    """Answers each request with the next scripted reply (then 500: nothing scripted)."""

    def __init__(self, *replies: Script) -> None:
        self.replies: list[Script] = list(replies)
        self.seen: list[Seen] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Script) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _next(self, seen: Seen) -> Reply:
        if not self.replies:
            return error(500, {"error": {"message": "nothing scripted for this request"}})
        script = self.replies.pop(0)
        return script(seen) if callable(script) else script

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # type: ignore[arg-type]
            task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]
        try:
            while True:
                seen = await _read_request(reader)
                if seen is None:
                    return
                self.seen.append(seen)
                reply = self._next(seen)
                if not await _write_reply(writer, reply):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Seen | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode().split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Seen(method, path, headers, body)


async def _write_reply(writer: asyncio.StreamWriter, reply: Reply) -> bool:
    """Send ``reply``; False when the connection was cut on purpose."""
    head = [f"HTTP/1.1 {reply.status} X", f"Content-Type: {reply.content_type}"]
    head += [f"{k}: {v}" for k, v in reply.headers.items()]
    if reply.content_type == "application/json" and not reply.cut:
        body = b"".join(reply.chunks)
        head.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        return True
    head.append("Transfer-Encoding: chunked")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    for chunk in reply.chunks:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        await writer.drain()
    if reply.cut:
        writer.transport.abort()
        return False
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


class ThreadedWireServer:
    """A :class:`WireServer` on its own thread and loop (for the CLI in a subprocess)."""

    def __init__(self, *replies: Script) -> None:
        self.server = WireServer(*replies)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> WireServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# -- the providers' stream formats ---------------------------------------------------------
def sse(events: Iterable[Any], *, named: bool = False) -> list[bytes]:
    """Each event as one SSE message; ``named``: with ``event: <type>`` (Anthropic)."""
    out = []
    for ev in events:
        data = ev if isinstance(ev, str) else json.dumps(ev)
        prefix = f"event: {ev['type']}\n" if named and isinstance(ev, dict) else ""
        out.append(f"{prefix}data: {data}\n\n".encode())
    return out


def openai_chunks(
    texts: Iterable[str] = (),
    *,
    tool_calls: Iterable[tuple[str, str, list[str]]] = (),
    usage: tuple[int, int] | None = (10, 5),
    finish: str | None = None,
    done: bool = True,
) -> list[bytes]:
    """An OpenAI chat.completion.chunk stream: the texts, then tool calls (id, name, argument
    fragments), the finish reason, a usage chunk, ``[DONE]``."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m"}
    events: list[Any] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    ]
    events += [{**base, "choices": [{"index": 0, "delta": {"content": t}}]} for t in texts]
    calls = list(tool_calls)
    for i, (call_id, name, parts) in enumerate(calls):
        first = {
            "index": i,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        events.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [first]}}]})
        for part in parts:
            frag = {"index": i, "function": {"arguments": part}}
            events.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [frag]}}]})
    reason = finish or ("tool_calls" if calls else "stop")
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    if usage is not None:
        events.append(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": sum(usage),
                },
            }
        )
    if done:
        events.append("[DONE]")
    return sse(events)


def anthropic_events(
    texts: Iterable[str] = (),
    *,
    tool_uses: Iterable[tuple[str, str, list[str]]] = (),
    usage: tuple[int, int] = (12, 6),
    stop: str | None = None,
    end: bool = True,
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": usage[0], "output_tokens": 1},
            },
        },
        {"type": "ping"},
    ]
    index = 0
    texts = list(texts)
    if texts:
        events.append(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        )
        events += [
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
            for t in texts
        ]
        events.append({"type": "content_block_stop", "index": 0})
        index = 1
    uses = list(tool_uses)
    for call_id, name, parts in uses:
        events.append(
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
            }
        )
        events += [
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": p},
            }
            for p in parts
        ]
        events.append({"type": "content_block_stop", "index": index})
        index += 1
    reason = stop or ("tool_use" if uses else "end_turn")
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"output_tokens": usage[1]},
        }
    )
    if end:
        events.append({"type": "message_stop"})
    return events


def ndjson(lines: Iterable[Any]) -> list[bytes]:
    return [(json.dumps(x) if not isinstance(x, str) else x).encode() + b"\n" for x in lines]


def ollama_lines(
    texts: Iterable[str] = (),
    *,
    tool_calls: Iterable[tuple[str, dict[str, Any]]] = (),
    counts: tuple[int, int] = (20, 7),
    done: bool = True,
) -> list[bytes]:
    base = {"model": "llama3.2", "created_at": "2026-12-03T10:00:00Z"}
    lines: list[Any] = [
        {**base, "message": {"role": "assistant", "content": t}, "done": False} for t in texts
    ]
    calls = [{"function": {"name": n, "arguments": a}} for n, a in tool_calls]
    if calls:
        lines.append(
            {
                **base,
                "message": {"role": "assistant", "content": "", "tool_calls": calls},
                "done": False,
            }
        )
    if done:
        lines.append(
            {
                **base,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "total_duration": 1000,
                "prompt_eval_count": counts[0],
                "eval_count": counts[1],
            }
        )
    return ndjson(lines)
