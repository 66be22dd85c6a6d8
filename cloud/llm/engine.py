"""The engine: one way for the cloud to ask a language model, and to get an answer without one.

``stream(request)`` goes down the chain (the configured providers in order, then the built-in
planner) until one answers. For each provider: the caller's and the provider's budgets admit
the request, :func:`~cloud.llm.context.fit` trims it to the window, and failures the provider
may recover from (429, 5xx, timeouts, a cut stream) are retried with exponential backoff and
full jitter, never sooner than its ``Retry-After``. Any other failure, or retries spent, moves
to the next provider; each move is a :class:`~cloud.llm.types.Fallback` with its reason, in
the answer, the log and ``cybernetic_llm_fallbacks_total``. When a stream fails after it began,
the next attempt starts with a :class:`~cloud.llm.types.Restart` chunk.

``complete(request)`` collects the stream and checks it: JSON against the request's schema,
tool calls against their tools. An answer that fails is sent back once with the error; a
second failure is :class:`~cloud.llm.errors.OutputRefused`. ``run_task(name, data)`` is a
structured request (cloud.llm.tasks): its data checked, its prompt rendered from the
template files, its answer validated and checked like a person's input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from cloud.llm.answers import TaskAnswer, no_check, retry_request, task_request, validate
from cloud.llm.budget import Budget
from cloud.llm.cache import AnswerCache
from cloud.llm.chain import ProviderCheck, build_chain, check_chain
from cloud.llm.context import fit
from cloud.llm.errors import (
    AllProvidersFailed,
    BudgetExceeded,
    ContextTooLarge,
    OutputRefused,
    ProviderError,
)
from cloud.llm.provider import Provider
from cloud.llm.record import CallRecord, Recorder
from cloud.llm.settings import BudgetSettings, LlmSettings
from cloud.llm.tokens import request_tokens
from cloud.llm.types import (
    Chunk,
    Done,
    Fallback,
    Request,
    Response,
    Restart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

log = logging.getLogger("cloud.llm")
NO_BUDGET = BudgetSettings()
Sleep = Callable[[float], Awaitable[None]]


class Outcome:
    """What a run found out beside its chunks: who answered, who did not and why (pass one
    to :meth:`Engine.stream` to read it when the stream ends)."""

    __slots__ = ("cached", "fallbacks", "model", "provider", "retried")

    def __init__(self) -> None:
        self.retried = ""
        """The last failure retried on the same provider (the reason of a Restart)."""
        self.provider = ""
        self.model = ""
        self.fallbacks: list[Fallback] = []
        self.cached = False


class Engine:
    def __init__(
        self,
        settings: LlmSettings,
        providers: Sequence[Provider],
        *,
        registry: CollectorRegistry | None = None,
        unavailable: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``providers`` in chain order (see :meth:`from_settings`); ``unavailable`` names
        configured providers that could not be built (a missing key) and why."""
        self.settings = settings
        self.chain: list[Provider] = list(providers)
        self.unavailable = dict(unavailable or {})
        self.recorder = Recorder(registry, log_prompts=settings.log_prompts)
        self.cache = AnswerCache(settings.cache_entries, settings.cache_ttl_s, clock)
        self._clock = clock
        self._sleep = sleep
        by_name = {p.label: p for p in settings.providers}
        self._prices = {
            p.name: (
                (by_name[p.name].cost_per_1k_input, by_name[p.name].cost_per_1k_output)
                if p.name in by_name
                else (0.0, 0.0)
            )
            for p in self.chain
        }
        self._retries = {
            p.name: by_name[p.name].retries if p.name in by_name else 0 for p in self.chain
        }
        self.budgets = {
            p.name: Budget(
                f"provider {p.name}",
                by_name[p.name].budget if p.name in by_name else NO_BUDGET,
                clock,
            )
            for p in self.chain
        }
        self.callers = {
            name: Budget(f"caller {name}", b, clock) for name, b in settings.callers.items()
        }

    @classmethod
    def from_settings(
        cls,
        settings: LlmSettings,
        *,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Engine:
        """The chain ``[llm]`` describes (cloud.llm.chain); a provider whose key cannot
        be read is left out and named in :attr:`unavailable`."""
        chain, unavailable = build_chain(settings, environ=environ, transport=transport)
        return cls(settings, chain, registry=registry, unavailable=unavailable)

    async def aclose(self) -> None:
        for p in self.chain:
            await p.aclose()

    def provider(self, name: str) -> Provider:
        for p in self.chain:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.chain)
        raise KeyError(f"no provider {name!r} in the chain (providers: {known})")

    # -- streaming ---------------------------------------------------------------------
    async def stream(
        self,
        request: Request,
        *,
        caller: str = "",
        only: str | None = None,
        outcome: Outcome | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """The answer as it comes (see the module's docstring); ``only``: one provider."""
        out = outcome if outcome is not None else Outcome()
        async with contextlib.aclosing(self._run(request, caller, out, only)) as run:
            async for chunk in run:
                yield chunk

    async def _run(
        self, request: Request, caller: str, out: Outcome, only: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        key = self.cache.key(request)
        hit = self.cache.get(key) if key is not None else None
        if hit is not None:
            out.provider, out.model, out.cached = hit.provider, hit.model, True
            self.recorder.call(self._rec(caller, hit.provider, hit.model, "cached", None))
            for chunk in hit.chunks():
                yield chunk
            return
        caller_budget = self.callers.get(caller)
        if caller_budget is not None:
            self._admit_caller(caller_budget, request)
        began = False
        for provider in [self.provider(only)] if only else self.chain:
            try:
                fitted = fit(request, provider)
            except ContextTooLarge as exc:
                self._fall(out, provider, "context", str(exc), caller=caller)
                continue
            attempt = 0
            while True:
                try:
                    self._admit(provider, fitted)
                except BudgetExceeded as exc:
                    self.recorder.refusals.labels(exc.scope, exc.measure).inc()
                    self._fall(out, provider, "budget", str(exc), caller=caller)
                    break
                try:
                    run = self._attempt(provider, fitted, caller, out, caller_budget, restart=began)
                    async with contextlib.aclosing(run) as chunks:
                        async for chunk in chunks:
                            began = True
                            yield chunk
                except ProviderError as exc:
                    delay = self._retry_delay(provider, exc, attempt)
                    if delay is None:
                        self._fall(out, provider, exc.kind, str(exc), caller=caller, recorded=True)
                        break
                    self.recorder.retries.labels(provider.name, exc.kind).inc()
                    out.retried = f"{provider.name}: {exc.kind}"
                    attempt += 1
                    await self._sleep(delay)
                    continue
                return
        raise AllProvidersFailed(out.fallbacks)

    def _admit_caller(self, budget: Budget, request: Request) -> None:
        try:
            budget.admit(request_tokens(request, "builtin"))
        except BudgetExceeded as exc:
            self.recorder.refusals.labels(exc.scope, exc.measure).inc()
            raise

    async def _attempt(
        self,
        provider: Provider,
        request: Request,
        caller: str,
        out: Outcome,
        caller_budget: Budget | None,
        *,
        restart: bool,
    ) -> AsyncGenerator[Chunk, None]:
        """One attempt at one provider: its chunks (after a Restart when an earlier attempt
        had begun), recorded; a failure is recorded and raised."""
        started = self._clock()
        first: float | None = None
        usage = Usage()
        answer: list[str] = []
        try:
            async with contextlib.aclosing(provider.stream(request)) as chunks:
                async for chunk in chunks:
                    if first is None:
                        first = self._clock()
                        if restart:
                            yield Restart(provider.name, _why(out, provider))
                    if isinstance(chunk, Usage):
                        usage = chunk
                    elif isinstance(chunk, TextDelta) and self.recorder.log_prompts:
                        answer.append(chunk.text)
                    yield chunk
        except ProviderError as exc:
            rec = self._rec(caller, provider.name, provider.model, exc.kind, started, first=first)
            rec.detail = str(exc)
            self.recorder.call(rec, request)
            raise
        cost = self._cost(provider, usage)
        tokens = usage.input_tokens + usage.output_tokens
        self.budgets[provider.name].spend(tokens, cost)
        if caller_budget is not None:
            caller_budget.spend(tokens, cost)
        rec = self._rec(caller, provider.name, provider.model, "ok", started, first=first)
        rec.input_tokens, rec.output_tokens, rec.cost = (
            usage.input_tokens,
            usage.output_tokens,
            cost,
        )
        self.recorder.call(rec, request, "".join(answer) if answer else None)
        out.provider, out.model = provider.name, provider.model

    def _admit(self, provider: Provider, request: Request) -> None:
        budget = self.budgets[provider.name]
        if budget.settings.unlimited:
            return
        tokens = request_tokens(request, provider.kind)
        price_in, _ = self._prices[provider.name]
        budget.admit(tokens, tokens * price_in / 1000)

    def _cost(self, provider: Provider, usage: Usage) -> float:
        price_in, price_out = self._prices[provider.name]
        return (usage.input_tokens * price_in + usage.output_tokens * price_out) / 1000

    def _retry_delay(self, provider: Provider, exc: ProviderError, attempt: int) -> float | None:
        """Seconds to wait before the next attempt at ``provider``; None: move on."""
        if not exc.retryable or attempt >= self._retries[provider.name]:
            return None
        s = self.settings
        if exc.retry_after is not None and exc.retry_after > s.max_retry_after_s:
            return None
        backoff = random.uniform(0, min(s.retry_max_s, s.retry_initial_s * 2**attempt))
        return max(backoff, exc.retry_after or 0.0)

    def _fall(
        self,
        out: Outcome,
        provider: Provider,
        reason: str,
        detail: str,
        *,
        caller: str,
        recorded: bool = False,
    ) -> None:
        out.fallbacks.append(Fallback(provider.name, reason, detail))
        out.retried = ""
        self.recorder.fallbacks.labels(provider.name, reason).inc()
        if not recorded:
            rec = self._rec(caller, provider.name, provider.model, reason, None)
            rec.detail = detail
            self.recorder.call(rec)
        log.warning(
            "llm provider passed over",
            extra={"provider": provider.name, "reason": reason, "detail": detail, "caller": caller},
        )

    def _rec(
        self,
        caller: str,
        provider: str,
        model: str,
        outcome: str,
        started: float | None,
        *,
        first: float | None = None,
    ) -> CallRecord:
        now = self._clock()
        return CallRecord(
            ts=time.time(),
            caller=caller,
            provider=provider,
            model=model,
            outcome=outcome,
            latency_ms=round((now - started) * 1000, 3) if started else 0.0,
            first_token_ms=round((first - started) * 1000, 3) if first and started else None,
        )

    # -- whole answers -------------------------------------------------------------------
    async def _collect(self, request: Request, caller: str, only: str | None = None) -> Response:
        out = Outcome()
        text: list[str] = []
        calls: list[ToolCall] = []
        usage = Usage()
        finish = "stop"
        async with contextlib.aclosing(self._run(request, caller, out, only)) as run:
            async for chunk in run:
                match chunk:
                    case TextDelta(t):
                        text.append(t)
                    case ToolCallDelta(c):
                        calls.append(c)
                    case Usage():
                        usage = chunk
                    case Done(reason):
                        finish = reason
                    case Restart():
                        text.clear()
                        calls.clear()
        return Response(
            text="".join(text),
            tool_calls=tuple(calls),
            provider=out.provider,
            model=out.model,
            finish_reason=finish,
            usage=usage,
            fallbacks=tuple(out.fallbacks),
            cached=out.cached,
        )

    async def complete(
        self, request: Request, *, caller: str = "", only: str | None = None
    ) -> Response:
        """The whole answer, checked against the request's schema and tools."""
        response, _ = await self._checked(request, caller, only, "answer", no_check)
        return response

    async def _checked(
        self,
        request: Request,
        caller: str,
        only: str | None,
        what: str,
        check: Callable[[dict[str, Any]], str],
    ) -> tuple[Response, Any]:
        response = await self._collect(request, caller, only)
        value, error = validate(request, response, check)
        if not error:
            if request.json_schema is not None or request.tools:
                self.recorder.validations.labels("passed").inc()
            self._keep(request, response)
            return response, value
        self.recorder.validations.labels("retried").inc()
        log.warning(
            "llm answer failed its schema; asking again",
            extra={"provider": response.provider, "what": what, "error": error[:200]},
        )
        retry = retry_request(request, response, error)
        again = await self._collect(retry, caller, only)
        value, error = validate(retry, again, check)
        if error:
            self.recorder.validations.labels("refused").inc()
            raise OutputRefused(what, again.provider, error)
        self.recorder.validations.labels("passed").inc()
        again.fallbacks = response.fallbacks + again.fallbacks
        return again, value

    def _keep(self, request: Request, response: Response) -> None:
        key = self.cache.key(request)
        if key is not None and not response.cached:
            self.cache.put(key, response)

    async def run_task(self, name: str, data: dict[str, Any], *, caller: str = "") -> TaskAnswer:
        """A structured request (classify, decompose, mitigate, review_policy), validated."""
        request, task = task_request(name, data)
        response, value = await self._checked(request, caller, None, f"task {name}", task.check)
        return TaskAnswer(
            value=value,
            provider=response.provider,
            fallbacks=response.fallbacks,
            cached=response.cached,
        )

    # -- operators ------------------------------------------------------------------------
    async def check(self, wait_s: float = 15.0) -> list[ProviderCheck]:
        """Each provider asked for a word, once, no retries: who answers, and how fast."""
        return await check_chain(self.chain, self.unavailable, wait_s, self._clock)

    def report(self) -> dict[str, Any]:
        """For ``/status``: the chain, budgets spent this period, the cache."""
        return {
            "chain": [p.name for p in self.chain],
            "unavailable": dict(self.unavailable),
            "budgets": {
                n: b.snapshot() for n, b in self.budgets.items() if not b.settings.unlimited
            },
            "callers": {n: b.snapshot() for n, b in self.callers.items()},
            "cached_answers": len(self.cache),
            "calls": len(self.recorder.recent),
        }


def _why(out: Outcome, provider: Provider) -> str:
    if out.retried:
        return out.retried
    last = out.fallbacks[-1] if out.fallbacks else None
    return f"{last.provider}: {last.reason}" if last else f"answer restarted on {provider.name}"
