"""`cybernetic bench llm`: the LLM engine's own cost, against a bare httpx stream.

A local server (its own thread and event loop) speaks OpenAI-compatible chat completions:
each request gets ``--chunks`` SSE chunks of text, a usage chunk and ``data: [DONE]``,
chunked, over keep-alive. In the same run, interleaved (the order alternating each round):

- **raw**: a bare ``httpx.AsyncClient.stream`` POST of the same body, reading lines to
  ``[DONE]`` (no decoding: the least any client does);
- **engine**: :meth:`Engine.stream` of a request with the same messages through the
  OpenAI adapter (budget admission, context fitting, cache lookup, decoding every chunk into
  typed chunks, recording and metrics), the planner off and the cache off.

``engine_overhead_ms_p50`` is the median of the per-round differences (engine - raw) of the
whole stream; ``first_token_ms_engine``/``_raw`` the medians of the time to the first text.
``planner_decisions_per_s``: the built-in planner's rules on a mix of the four tasks with
varied data (classify, decompose, mitigate, review_policy in equal parts);
``planner_engine_decisions_per_s``: the same through :meth:`Engine.run_task` (template,
schema, validation; cache off). Targets (issue 26): overhead <= 2 ms p50, planner >= 10,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import threading
import time
from typing import Any, Self

import httpx

from cloud.llm import Engine, LlmSettings, Message, ProviderSettings, Request, TextDelta
from cloud.llm.planner import decide
from cybernetic.bench import progress

DESCRIPTION = (
    "LLM engine: streaming overhead over a bare httpx stream to the same local server, "
    "first token, built-in planner decisions per second"
)
TARGETS = {"engine_overhead_ms_p50": 2.0, "planner_decisions_per_s": 10_000.0}
WARMUP = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=300, help="streams per side")
    parser.add_argument("--chunks", type=int, default=20, help="text chunks per stream")
    parser.add_argument("--decisions", type=int, default=20_000, help="planner decisions")
    parser.add_argument("--seed", type=int, default=26, help="random seed of the planner's data")


# -- the server ----------------------------------------------------------------------------
def _body(chunks: int) -> bytes:
    base = {"id": "c", "object": "chat.completion.chunk", "model": "bench"}
    events: list[Any] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    events += [
        {**base, "choices": [{"index": 0, "delta": {"content": f"word{i} "}}]}
        for i in range(chunks)
    ]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append(
        {**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": chunks}}
    )
    out = b""
    for ev in [*events, "[DONE]"]:
        data = (ev if isinstance(ev, str) else json.dumps(ev)).encode()
        part = b"data: " + data + b"\n\n"
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


class _Server:
    """OpenAI-compatible SSE on 127.0.0.1, on a thread of its own."""

    def __init__(self, chunks: int) -> None:
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        self.reply = head + _body(chunks)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def __enter__(self) -> Self:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# -- the two clients -----------------------------------------------------------------------
async def _raw(client: httpx.AsyncClient, body: bytes) -> tuple[float, float]:
    start = time.perf_counter()
    first = 0.0
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    async with client.stream("POST", "/chat/completions", content=body, headers=headers) as r:
        async for line in r.aiter_lines():
            if not first and '"content"' in line:
                first = time.perf_counter()
            if line == "data: [DONE]":
                break
    end = time.perf_counter()
    return (end - start) * 1000, (first - start) * 1000


async def _engine(engine: Engine, request: Request) -> tuple[float, float]:
    start = time.perf_counter()
    first = 0.0
    async for chunk in engine.stream(request):
        if not first and isinstance(chunk, TextDelta):
            first = time.perf_counter()
    end = time.perf_counter()
    return (end - start) * 1000, (first - start) * 1000


async def _streams(port: int, runs: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}"
    settings = LlmSettings(
        providers=[ProviderSettings(kind="openai", model="bench", base_url=url)],
        planner=False,
        cache_entries=0,
    )
    engine = Engine.from_settings(settings)
    request = Request(messages=(Message(role="user", content="Say twenty words."),))
    body = json.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": "Say twenty words."}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 1024,
        }
    ).encode()
    raw: list[tuple[float, float]] = []
    eng: list[tuple[float, float]] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(WARMUP):
            await _raw(client, body)
            await _engine(engine, request)
        for i in range(runs):
            if i % 2:
                raw.append(await _raw(client, body))
                eng.append(await _engine(engine, request))
            else:
                eng.append(await _engine(engine, request))
                raw.append(await _raw(client, body))
    await engine.aclose()
    diffs = [e[0] - r[0] for e, r in zip(eng, raw, strict=True)]
    raw_p50 = statistics.median(r[0] for r in raw)
    eng_p50 = statistics.median(e[0] for e in eng)
    return {
        "engine_overhead_ms_p50": round(statistics.median(diffs), 3),
        "engine_stream_ms_p50": round(eng_p50, 3),
        "raw_stream_ms_p50": round(raw_p50, 3),
        "engine_vs_raw_ratio": round(eng_p50 / raw_p50, 3),
        "first_token_ms_engine": round(statistics.median(e[1] for e in eng), 3),
        "first_token_ms_raw": round(statistics.median(r[1] for r in raw), 3),
    }


# -- the planner ---------------------------------------------------------------------------
WORDS = (
    *("valve", "pump", "fan", "heater", "door", "light"),
    *("sensor", "water", "temperature", "pressure", "noise", "smoke"),
)
KINDS = ("flood", "out_of_range", "stuck", "tamper", "zombie")


def _requests(n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    caps = [{"name": f"{w}.set", "description": f"set the {w}"} for w in WORDS]
    policy = (
        'policy "p" version 1\nrule hot when temp > {t} then flag because "hot"\n'
        "rule flood when rate(1s) > {r} then deny\n"
    )
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(6))
        match i % 4:
            case 0:
                out.append(("classify", {"text": words, "labels": [c["name"] for c in caps]}))
            case 1:
                goal = f"close the {rng.choice(WORDS)}, then check the {rng.choice(WORDS)}"
                out.append(("decompose", {"goal": goal, "capabilities": caps}))
            case 2:
                anomaly = {
                    "kind": rng.choice(KINDS),
                    "device": f"sensor-{rng.randrange(1000)}",
                    "metric": "temp",
                    "value": rng.uniform(-100, 200),
                    "threshold": 120.0,
                    "rate_per_s": rng.uniform(1, 100),
                }
                out.append(("mitigate", anomaly))
            case _:
                source = policy.format(t=rng.randrange(100), r=rng.randrange(1, 50))
                out.append(("review_policy", {"source": source}))
    return out


def _planner_rate(requests: list[tuple[str, dict[str, Any]]]) -> float:
    start = time.perf_counter()
    for task, data in requests:
        decide(task, data)
    return len(requests) / (time.perf_counter() - start)


async def _engine_rate(requests: list[tuple[str, dict[str, Any]]]) -> float:
    engine = Engine.from_settings(LlmSettings(cache_entries=0))
    start = time.perf_counter()
    for task, data in requests:
        await engine.run_task(task, data)
    rate = len(requests) / (time.perf_counter() - start)
    await engine.aclose()
    return rate


def run(args: argparse.Namespace) -> dict[str, object]:
    progress(
        f"streams: {args.runs} raw and {args.runs} through the engine, {args.chunks} chunks each"
    )
    with _Server(args.chunks) as server:
        streams = asyncio.run(_streams(server.port, args.runs))
    progress(f"planner: {args.decisions:,} decisions")
    requests = _requests(args.decisions, args.seed)
    _planner_rate(requests[:200])  # warm the caches (compiled schemas, label terms)
    planner = statistics.median(_planner_rate(requests) for _ in range(3))
    through_engine = asyncio.run(_engine_rate(requests[: max(1, args.decisions // 4)]))
    result: dict[str, object] = {
        "runs": args.runs,
        "chunks": args.chunks,
        **streams,
        "planner_decisions_per_s": round(planner),
        "planner_engine_decisions_per_s": round(through_engine),
        "decisions": args.decisions,
    }
    result["targets"] = TARGETS
    result["targets_met"] = (
        streams["engine_overhead_ms_p50"] <= TARGETS["engine_overhead_ms_p50"]
        and planner >= TARGETS["planner_decisions_per_s"]
    )
    return result
