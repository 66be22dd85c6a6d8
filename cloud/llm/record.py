"""Every call recorded: one log record and the metrics, never a key, the prompt only with
``[llm] log_prompts``.

Metrics (on the daemon's registry, served by amcp.runtime.metrics; docs/operations.md):

- ``cybernetic_llm_calls_total{provider, outcome}``: attempts by outcome (``ok``, ``cached``,
  an error kind such as ``rate_limited``, ``budget``, ``context``);
- ``cybernetic_llm_tokens_total{provider, direction}``: input and output tokens reported;
- ``cybernetic_llm_cost_total{provider}``: in the unit of the configured prices;
- ``cybernetic_llm_call_seconds{provider}`` and ``cybernetic_llm_first_token_seconds{provider}``;
- ``cybernetic_llm_retries_total{provider, reason}``, ``cybernetic_llm_fallbacks_total{provider,
  reason}``: another attempt at the same provider, a move to the next;
- ``cybernetic_llm_budget_refusals_total{scope, measure}``;
- ``cybernetic_llm_validations_total{outcome}``: ``passed``, ``retried``, ``refused``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram

from cloud.llm.types import Request

log = logging.getLogger("cloud.llm")
RECENT = 200
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class CallRecord(msgspec.Struct, kw_only=True):
    ts: float
    caller: str
    provider: str
    model: str
    outcome: str
    latency_ms: float
    first_token_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    detail: str = ""


class Recorder:
    def __init__(self, registry: CollectorRegistry | None, *, log_prompts: bool = False) -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.registry = reg
        self.log_prompts = log_prompts
        self.recent: deque[CallRecord] = deque(maxlen=RECENT)
        self.calls = Counter(
            "cybernetic_llm_calls",
            "LLM provider attempts by outcome",
            ["provider", "outcome"],
            registry=reg,
        )
        self.tokens = Counter(
            "cybernetic_llm_tokens",
            "Tokens the providers reported, by direction",
            ["provider", "direction"],
            registry=reg,
        )
        self.cost = Counter(
            "cybernetic_llm_cost",
            "Cost of the calls in the unit of the configured prices",
            ["provider"],
            registry=reg,
        )
        self.seconds = Histogram(
            "cybernetic_llm_call_seconds",
            "Time of a successful call to its last chunk",
            ["provider"],
            buckets=_BUCKETS,
            registry=reg,
        )
        self.first_token = Histogram(
            "cybernetic_llm_first_token_seconds",
            "Time of a call to its first chunk",
            ["provider"],
            buckets=_BUCKETS,
            registry=reg,
        )
        self.retries = Counter(
            "cybernetic_llm_retries",
            "Further attempts at the same provider, by reason",
            ["provider", "reason"],
            registry=reg,
        )
        self.fallbacks = Counter(
            "cybernetic_llm_fallbacks",
            "Moves past a provider to the next, by reason",
            ["provider", "reason"],
            registry=reg,
        )
        self.refusals = Counter(
            "cybernetic_llm_budget_refusals",
            "Requests refused by a spent budget",
            ["scope", "measure"],
            registry=reg,
        )
        self.validations = Counter(
            "cybernetic_llm_validations",
            "Schema checks of answers by outcome",
            ["outcome"],
            registry=reg,
        )

    def call(
        self, rec: CallRecord, request: Request | None = None, answer: str | None = None
    ) -> None:
        self.recent.append(rec)
        self.calls.labels(rec.provider, rec.outcome).inc()
        if rec.outcome == "ok":
            self.seconds.labels(rec.provider).observe(rec.latency_ms / 1000)
            if rec.first_token_ms is not None:
                self.first_token.labels(rec.provider).observe(rec.first_token_ms / 1000)
            if rec.input_tokens:
                self.tokens.labels(rec.provider, "input").inc(rec.input_tokens)
            if rec.output_tokens:
                self.tokens.labels(rec.provider, "output").inc(rec.output_tokens)
            if rec.cost:
                self.cost.labels(rec.provider).inc(rec.cost)
        if not log.isEnabledFor(logging.INFO):
            return
        extra: dict[str, Any] = msgspec.structs.asdict(rec)
        extra.pop("ts")
        if self.log_prompts and request is not None:
            extra["prompt_system"] = request.system
            extra["prompt_messages"] = [f"{m.role}: {m.content}" for m in request.messages]
            if answer is not None:
                extra["answer"] = answer
        level = logging.INFO if rec.outcome in ("ok", "cached") else logging.WARNING
        log.log(level, "llm call", extra=extra)

    def now(self) -> float:
        return time.time()
