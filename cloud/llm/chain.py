"""The chain of providers ``[llm]`` describes, and the operators' check of it.

A provider whose key cannot be read is left out of the chain (logged, and named as
unavailable with its reason), so the cloud still starts and ``cybernetic llm check`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import httpx
import msgspec

from cloud.llm.anthropic import AnthropicProvider
from cloud.llm.errors import LlmKeyError, ProviderError
from cloud.llm.http import HttpProvider
from cloud.llm.keys import read_key
from cloud.llm.ollama import OllamaProvider
from cloud.llm.openai import OpenAIProvider
from cloud.llm.planner import Planner
from cloud.llm.provider import Provider
from cloud.llm.settings import LlmSettings, ProviderSettings
from cloud.llm.types import Message, Request

log = logging.getLogger("cloud.llm")
ADAPTERS: dict[str, type[HttpProvider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "ollama": OllamaProvider,
}


class ProviderCheck(msgspec.Struct, kw_only=True):
    provider: str
    kind: str
    model: str
    ok: bool
    latency_ms: float | None = None
    detail: str = ""


def build_provider(
    settings: ProviderSettings,
    *,
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> HttpProvider:
    return ADAPTERS[settings.kind](settings, read_key(settings, environ), transport=transport)


def build_chain(
    settings: LlmSettings,
    *,
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[list[Provider], dict[str, str]]:
    """(the chain in order, the providers left out and why)."""
    chain: list[Provider] = []
    unavailable: dict[str, str] = {}
    for p in settings.providers:
        try:
            chain.append(build_provider(p, environ=environ, transport=transport))
        except LlmKeyError as exc:
            unavailable[p.label] = exc.problem
            log.warning(
                "llm provider left out of the chain",
                extra={"provider": p.label, "problem": exc.problem},
            )
    if settings.planner:
        chain.append(Planner())
    return chain, unavailable


async def check_chain(
    chain: Sequence[Provider],
    unavailable: Mapping[str, str],
    wait_s: float = 15.0,
    clock: Callable[[], float] = time.monotonic,
) -> list[ProviderCheck]:
    """Ask each provider for a word, once, no retries: who answers, and how fast."""
    probe = Request(
        messages=(Message(role="user", content="Reply with the word OK."),),
        max_tokens=5,
        temperature=0,
        timeout=wait_s,
    )
    results = [
        ProviderCheck(provider=name, kind="?", model="?", ok=False, detail=problem)
        for name, problem in unavailable.items()
    ]
    for p in chain:
        result = ProviderCheck(provider=p.name, kind=p.kind, model=p.model, ok=False)
        started = clock()
        try:
            async with asyncio.timeout(wait_s), contextlib.aclosing(p.stream(probe)) as s:
                async for _ in s:
                    pass
        except ProviderError as exc:
            result.detail = str(exc)
        except TimeoutError:
            result.detail = f"no answer in {wait_s:g} s"
        else:
            result.ok = True
            result.latency_ms = round((clock() - started) * 1000, 1)
        results.append(result)
    return results
