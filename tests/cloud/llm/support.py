"""Engines pointed at a test's :class:`~tests.cloud.llm.wire.WireServer`."""

from __future__ import annotations

from typing import Any

from cloud.llm import Engine, LlmSettings, ProviderSettings
from cloud.llm.types import Message, Request

KEY = "sk-test-4f1c9e0b7a2d4e6f8a1b3c5d7e9f0a2b"
ENV = {"TEST_LLM_KEY": KEY}


class Sleeps:
    """The engine's sleep: records each wait it asks for and yields without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def provider(kind: str, url: str, **kw: Any) -> ProviderSettings:
    base = {"kind": kind, "model": f"{kind}-model", "base_url": url, "key_env": "TEST_LLM_KEY"}
    return ProviderSettings(**(base | kw))


def engine(*providers: ProviderSettings, sleeps: Sleeps | None = None, **settings: Any) -> Engine:
    llm = LlmSettings(providers=list(providers), **settings)
    built = Engine.from_settings(llm, environ=ENV)
    if sleeps is not None:
        built._sleep = sleeps
    return built


def ask(text: str, **kw: Any) -> Request:
    return Request(messages=(Message(role="user", content=text),), **kw)
