"""The provider seam: one async method, ``stream(request) -> chunks``.

Every provider (the three HTTP adapters and the built-in planner) implements
:class:`Provider`; the engine above it adds retries, fallback, budgets, context fitting, the
cache, validation and recording, the same for all. A provider raises only
:class:`~cloud.llm.errors.ProviderError` (mapped at its boundary) and ends every stream it
finishes with a :class:`~cloud.llm.types.Done` chunk.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from cloud.llm.types import Chunk, Request


class Provider(Protocol):
    name: str
    """Its name in the chain (``[[llm.providers]] name``, or ``planner``)."""
    kind: str
    """``openai``, ``anthropic``, ``ollama`` or ``builtin``: its wire format, and the family
    whose token counting its context budget uses."""
    model: str
    context_window: int
    max_output_tokens: int
    timeout_s: float

    def stream(self, request: Request) -> AsyncGenerator[Chunk, None]:
        """The answer as it comes; raises ProviderError when the attempt fails."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
