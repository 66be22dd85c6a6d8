"""Token counts for context budgeting, per provider family.

No provider's tokenizer ships with the engine today, so every family uses one stated,
conservative estimate: **one token per 3 bytes of UTF-8**, rounded up, plus 4 tokens per
message for its role and framing. BPE tokenizers (OpenAI's, Anthropic's, Llama's) average about
4 characters a token on English text, so the estimate over-counts and trimming errs toward
leaving room. A family's real tokenizer plugs in with :func:`register` (text -> count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from cloud.llm.types import Message, Request

BYTES_PER_TOKEN = 3
PER_MESSAGE = 4

Counter = Callable[[str], int]


def estimate(text: str) -> int:
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)


_COUNTERS: dict[str, Counter] = {}


def register(family: str, counter: Counter) -> None:
    """Count ``family``'s tokens with ``counter`` instead of the estimate."""
    _COUNTERS[family] = counter


def counter(family: str) -> Counter:
    return _COUNTERS.get(family, estimate)


def message_tokens(message: Message, count: Counter) -> int:
    n = PER_MESSAGE + count(message.content)
    for call in message.tool_calls:
        n += count(call.name) + count(msgspec.json.encode(call.arguments).decode())
    return n


def fixed_tokens(request: Request, count: Counter) -> int:
    """What every trimmed version of the request keeps: system prompt, tools, schema."""
    n = count(request.system) + PER_MESSAGE if request.system else 0
    if request.tools:
        n += count(msgspec.json.encode(request.tools).decode())
    if request.json_schema is not None:
        n += count(msgspec.json.encode(request.json_schema).decode())
    return n


def request_tokens(request: Request, family: str) -> int:
    count = counter(family)
    return fixed_tokens(request, count) + sum(message_tokens(m, count) for m in request.messages)


def total(messages: Iterable[Message], count: Counter) -> int:
    return sum(message_tokens(m, count) for m in messages)
