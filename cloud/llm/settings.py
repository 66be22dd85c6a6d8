"""``[llm]``: the providers of the chain, their keys, windows and budgets (docs/llm.md)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Kind = Literal["openai", "anthropic", "ollama"]
DEFAULT_BASE_URL: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama": "http://127.0.0.1:11434",
}
PLANNER = "planner"
"""The built-in planner's name in the chain, in metrics and in fallbacks."""
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class BudgetSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What may be spent per period; 0 is no limit on that measure."""

    period_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    requests: Count = 0
    tokens: Count = 0
    """Input plus output tokens, as the providers report them."""
    cost: NonNegative = 0.0
    """In the unit of the providers' ``cost_per_1k_*`` prices."""

    @property
    def unlimited(self) -> bool:
        return not (self.requests or self.tokens or self.cost)


class ProviderSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One entry of ``[[llm.providers]]``, tried in the order given."""

    kind: Kind
    model: str
    name: str = ""
    """Its name in the chain, in logs and metrics; empty: the kind."""
    base_url: str = ""
    """Empty: the kind's public endpoint (OpenAI, Anthropic) or a local Ollama."""
    key_env: str = ""
    """The environment variable holding the key (its name, never the key)."""
    key_file: str = ""
    """A file holding the key alone; refused unless only its owner may read it."""
    context_window: Annotated[int, msgspec.Meta(ge=256)] = 8192
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] = 1024
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    """Further attempts on a 429, a 5xx, a timeout or a cut stream before the next provider."""
    cost_per_1k_input: NonNegative = 0.0
    cost_per_1k_output: NonNegative = 0.0
    budget: BudgetSettings = BudgetSettings()

    @property
    def label(self) -> str:
        return self.name or self.kind

    @property
    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URL[self.kind]).rstrip("/")

    def __post_init__(self) -> None:
        if self.key_env and self.key_file:
            raise ValueError(f"llm provider {self.label}: give key_env or key_file, not both")
        if self.label == PLANNER:
            raise ValueError(f"llm provider name {PLANNER!r} is the built-in planner's")
        if not self.model:
            raise ValueError(f"llm provider {self.label}: model must not be empty")


class LlmSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    providers: list[ProviderSettings] = []
    """The fallback chain, first first; the built-in planner comes after them."""
    planner: bool = True
    """The built-in planner ends the chain (false: only the providers above answer)."""
    log_prompts: bool = False
    """Put the prompt and the answer in each call's log record (never a key)."""
    cache_entries: Count = 256
    """Deterministic answers (temperature 0) kept for identical requests; 0: no cache."""
    cache_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    retry_initial_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    retry_max_s: Annotated[float, msgspec.Meta(gt=0)] = 8.0
    max_retry_after_s: NonNegative = 30.0
    """A provider asking to wait longer than this (Retry-After) is skipped for the next."""
    callers: dict[str, BudgetSettings] = {}
    """Budgets per caller (``s4``, ``s5``, ``cli``...); a caller not named has none."""

    def __post_init__(self) -> None:
        names = [p.label for p in self.providers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"llm provider names must be unique: {', '.join(dup)}")
        if not self.providers and not self.planner:
            raise ValueError("llm: no provider and planner = false leaves nothing to answer")
