"""Errors of the LLM engine. Each carries its facts as attributes; none carries a key.

::

    LlmError
    ├── ProviderError        one provider's attempt failed; ``kind`` says how (below),
    │                        ``retryable`` whether another attempt may succeed
    ├── AllProvidersFailed   every provider of the chain failed; ``fallbacks`` says why each
    ├── BudgetExceeded       a caller's or a provider's budget for this period is spent
    ├── ContextTooLarge      the newest turn alone does not fit a provider's window
    ├── OutputRefused        an answer failed its schema twice (the retry included)
    ├── TaskDataError        a structured request's data is not what its task takes
    └── LlmKeyError          a provider's key is missing, or its file is readable by others

Foreign errors (httpx, JSON decoding) are mapped to :class:`ProviderError` at the adapter
boundary (``raise ProviderError(...) from exc``). Messages quote at most a short, key-scrubbed
excerpt of what a provider said.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from cloud.llm.types import Fallback

ErrorKind = Literal[
    "rate_limited",  # 429
    "server_error",  # 5xx, an overloaded provider, an error event in the stream
    "timeout",  # no answer (or no next chunk) in time
    "unreachable",  # connection refused, DNS, TLS
    "stream_cut",  # the connection closed before the stream's end
    "malformed",  # a chunk or body that is not the provider's format
    "refused",  # a 4xx other than 429: the request itself is wrong (not retried)
    "auth",  # 401/403: the key is wrong (not retried)
]
RETRYABLE: frozenset[str] = frozenset(
    {"rate_limited", "server_error", "timeout", "unreachable", "stream_cut"}
)


class LlmError(Exception):
    """Base of every engine error."""


class ProviderError(LlmError):
    def __init__(
        self,
        provider: str,
        kind: ErrorKind,
        detail: str = "",
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.kind = kind
        self.detail = detail[:300]
        self.status = status
        self.retry_after = retry_after
        where = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{provider}: {kind}{where}" + (f": {self.detail}" if detail else ""))

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


class AllProvidersFailed(LlmError):  # noqa: N818 - reads as what happened
    def __init__(self, fallbacks: Sequence[Fallback]) -> None:
        self.fallbacks = tuple(fallbacks)
        why = "; ".join(f.detail or f"{f.provider}: {f.reason}" for f in self.fallbacks)
        why = why or "no provider in the chain"
        super().__init__(f"no provider answered ({why})")


class BudgetExceeded(LlmError):  # noqa: N818 - reads as what happened
    def __init__(self, scope: str, measure: str, limit: float, resets_in_s: float) -> None:
        self.scope = scope
        self.measure = measure
        self.limit = limit
        self.resets_in_s = resets_in_s
        super().__init__(
            f"{scope}: {measure} budget of {limit:g} per period spent "
            f"(resets in {resets_in_s:.0f} s)"
        )


class ContextTooLarge(LlmError):  # noqa: N818 - reads as what happened
    def __init__(self, provider: str, needed: int, window: int) -> None:
        self.provider = provider
        self.needed = needed
        self.window = window
        super().__init__(
            f"{provider}: the system prompt and the newest turn need about {needed} tokens, "
            f"the context window holds {window}"
        )


class OutputRefused(LlmError):  # noqa: N818 - reads as what happened
    def __init__(self, what: str, provider: str, error: str) -> None:
        self.what = what
        self.provider = provider
        self.error = error[:300]
        super().__init__(
            f"{what}: the answer of {provider} failed its schema twice, refused: {self.error}"
        )


class TaskDataError(LlmError):
    def __init__(self, task: str, error: str) -> None:
        self.task = task
        self.error = error
        super().__init__(f"task {task}: {error}")


class LlmKeyError(LlmError):
    def __init__(self, provider: str, problem: str) -> None:
        self.provider = provider
        self.problem = problem
        super().__init__(f"provider {provider}: {problem}")
