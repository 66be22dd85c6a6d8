"""The engine over real adapters and local servers: fallback with reasons, budgets, the
cache, schema checks with one retry then refusal, recording, and keys kept out of logs."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from cloud.llm import (
    BudgetExceeded,
    BudgetSettings,
    Engine,
    LlmKeyError,
    LlmSettings,
    OutputRefused,
    ProviderError,
    Tool,
)
from cloud.llm.budget import Budget
from cloud.llm.keys import read_key
from tests.cloud.llm.support import ENV, KEY, Sleeps, ask, engine, provider
from tests.cloud.llm.wire import Reply, WireServer, error, openai_chunks

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}},
    "required": ["n"],
    "additionalProperties": False,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_fallback_moves_down_the_chain_and_says_why() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with (
        WireServer(error(401, {"error": {"message": "bad key"}})) as auth,
        WireServer(Reply(chunks=openai_chunks(["from the third"]))) as good,
    ):
        eng = engine(
            provider("openai", dead, name="down", retries=1),
            provider("openai", auth.url, name="wrongkey"),
            provider("openai", good.url, name="good"),
            sleeps=Sleeps(),
        )
        response = await eng.complete(ask("hi"))
        await eng.aclose()
    assert response.text == "from the third"
    assert response.provider == "good"
    assert [(f.provider, f.reason) for f in response.fallbacks] == [
        ("down", "unreachable"),
        ("wrongkey", "auth"),
    ]
    reg = eng.recorder.registry
    assert (
        reg.get_sample_value(
            "cybernetic_llm_fallbacks_total", {"provider": "down", "reason": "unreachable"}
        )
        == 1
    )
    assert (
        reg.get_sample_value("cybernetic_llm_calls_total", {"provider": "good", "outcome": "ok"})
        == 1
    )
    assert (
        reg.get_sample_value(
            "cybernetic_llm_tokens_total", {"provider": "good", "direction": "input"}
        )
        == 10
    )


async def test_the_planner_answers_when_every_model_fails() -> None:
    eng = engine(provider("openai", f"http://127.0.0.1:{free_port()}", retries=0))
    answer = await eng.run_task("classify", {"text": "open the valve", "labels": ["valve", "fan"]})
    await eng.aclose()
    assert answer.provider == "planner"
    assert answer.value["label"] == "valve"
    assert answer.fallbacks[0].reason == "unreachable"


async def test_a_caller_budget_refuses_when_spent() -> None:
    async with WireServer(*[Reply(chunks=openai_chunks(["x"]))] * 2) as srv:
        eng = engine(
            provider("openai", srv.url, retries=0),
            callers={"s4": BudgetSettings(requests=2, period_s=60)},
        )
        await eng.complete(ask("one"), caller="s4")
        await eng.complete(ask("two"), caller="s4")
        with pytest.raises(BudgetExceeded) as info:
            await eng.complete(ask("three"), caller="s4")
        other = await eng.complete(ask("three"), caller="s5")  # has no budget
        await eng.aclose()
    assert (info.value.scope, info.value.measure, info.value.limit) == ("caller s4", "requests", 2)
    assert 0 < info.value.resets_in_s <= 60
    assert len(srv.seen) == 3  # the refused request never reached it
    assert other.provider == "planner"  # the server had two replies only
    assert (
        eng.recorder.registry.get_sample_value(
            "cybernetic_llm_budget_refusals_total", {"scope": "caller s4", "measure": "requests"}
        )
        == 1
    )


async def test_a_provider_token_budget_moves_on_to_the_next() -> None:
    async with WireServer(Reply(chunks=openai_chunks(["a"], usage=(900, 150)))) as srv:
        eng = engine(provider("openai", srv.url, budget=BudgetSettings(tokens=1000)))
        first = await eng.complete(ask("one"))
        second = await eng.complete(ask("two"))
        await eng.aclose()
    assert first.provider == "openai"
    assert second.provider == "planner"
    assert second.fallbacks[0].reason == "budget"
    assert "tokens budget of 1000" in second.fallbacks[0].detail
    assert eng.budgets["openai"].snapshot()["tokens"] == 1050


async def test_a_cost_budget() -> None:
    async with WireServer(Reply(chunks=openai_chunks(["a"], usage=(1000, 1000)))) as srv:
        eng = engine(
            provider(
                "openai",
                srv.url,
                cost_per_1k_input=0.5,
                cost_per_1k_output=1.5,
                budget=BudgetSettings(cost=2.0),
            )
        )
        await eng.complete(ask("one"))
        second = await eng.complete(ask("two"))
        await eng.aclose()
    assert second.fallbacks[0].reason == "budget"
    assert eng.recorder.registry.get_sample_value(
        "cybernetic_llm_cost_total", {"provider": "openai"}
    ) == pytest.approx(2.0)


def test_a_budget_period_starts_again() -> None:
    now = [100.0]
    budget = Budget("caller x", BudgetSettings(requests=1, period_s=10), clock=lambda: now[0])
    budget.admit()
    with pytest.raises(BudgetExceeded):
        budget.admit()
    now[0] += 10.5
    budget.admit()


async def test_identical_deterministic_requests_are_answered_from_the_cache() -> None:
    async with WireServer(*[Reply(chunks=openai_chunks(["same"]))] * 3) as srv:
        eng = engine(provider("openai", srv.url), planner=False)
        first = await eng.complete(ask("q", temperature=0))
        again = await eng.complete(ask("q", temperature=0))
        other = await eng.complete(ask("other", temperature=0))
        warm = await eng.complete(ask("q", temperature=0.7))  # not deterministic
        await eng.aclose()
    assert (first.cached, again.cached, other.cached, warm.cached) == (False, True, False, False)
    assert again.text == "same"
    assert len(srv.seen) == 3


async def test_an_answer_failing_its_schema_is_asked_again_once() -> None:
    bad = Reply(chunks=openai_chunks(['{"n": "four"}']))
    good = Reply(chunks=openai_chunks(['{"n": 4}']))
    async with WireServer(bad, good) as srv:
        eng = engine(provider("openai", srv.url), planner=False)
        response = await eng.complete(ask("2+2", json_schema=SCHEMA, temperature=0))
        await eng.aclose()
    assert response.text == '{"n": 4}'
    retry = srv.seen[1].json()["messages"]
    assert retry[-2] == {"role": "assistant", "content": '{"n": "four"}'}
    assert "refused" in retry[-1]["content"]
    assert "must be integer" in retry[-1]["content"]
    reg = eng.recorder.registry
    assert reg.get_sample_value("cybernetic_llm_validations_total", {"outcome": "retried"}) == 1


async def test_an_answer_failing_twice_is_refused() -> None:
    async with WireServer(
        Reply(chunks=openai_chunks(["not json"])), Reply(chunks=openai_chunks(['{"n": 1.5}']))
    ) as srv:
        eng = engine(provider("openai", srv.url))
        with pytest.raises(OutputRefused) as info:
            await eng.complete(ask("2+2", json_schema=SCHEMA, temperature=0))
        await eng.aclose()
    assert info.value.provider == "openai"
    assert "must be integer" in info.value.error
    assert len(eng.cache) == 0  # nothing refused is kept


async def test_a_tool_call_against_its_schema() -> None:
    tool = Tool(name="set", parameters=SCHEMA)
    wrong = Reply(chunks=openai_chunks(tool_calls=[("c1", "set", ['{"n": "x"}'])]))
    unknown = Reply(chunks=openai_chunks(tool_calls=[("c2", "rm_rf", ["{}"])]))
    async with WireServer(wrong, unknown) as srv:
        eng = engine(provider("openai", srv.url), planner=False)
        with pytest.raises(OutputRefused, match="no such tool"):
            await eng.complete(ask("set it", tools=(tool,)))
        await eng.aclose()
    assert len(srv.seen) == 2


async def test_a_proposed_policy_must_compile() -> None:
    answer = (
        '{"action": "quarantine", "target": {"gateway": "", "device": "d", "zone": ""}, '
        '"rate_per_s": null, "policy": "rule x when then deny", "reason": "r", '
        '"severity": "critical"}'
    )
    async with WireServer(*[Reply(chunks=openai_chunks([answer]))] * 2) as srv:
        eng = engine(provider("openai", srv.url))
        with pytest.raises(OutputRefused, match="does not compile"):
            await eng.run_task("mitigate", {"kind": "tamper", "device": "d"})
        await eng.aclose()
    assert len(srv.seen) == 2


def test_a_key_file_only_its_owner_may_read(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    path.chmod(0o644)
    settings = provider("openai", "http://x", key_env="", key_file=str(path))
    with pytest.raises(LlmKeyError, match="mode 0644") as info:
        read_key(settings)
    assert KEY not in str(info.value)
    path.chmod(0o600)
    assert read_key(settings) == KEY
    missing = provider("openai", "http://x", key_env="NO_SUCH_VARIABLE_FOR_LLM")
    with pytest.raises(LlmKeyError, match="NO_SUCH_VARIABLE_FOR_LLM is not set"):
        read_key(missing, environ={})


async def test_a_provider_without_its_key_is_left_out() -> None:
    settings = LlmSettings(providers=[provider("openai", "http://x", key_env="UNSET_LLM_KEY")])
    eng = Engine.from_settings(settings, environ={})
    assert [p.name for p in eng.chain] == ["planner"]
    checks = await eng.check()
    await eng.aclose()
    assert [(c.provider, c.ok) for c in checks] == [("openai", False), ("planner", True)]
    assert "UNSET_LLM_KEY is not set" in checks[0].detail


async def test_the_key_never_reaches_the_logs_or_errors(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Debug logging on everything (httpx, httpcore included), prompts logged, and a
    provider that echoes the key in its error body."""
    echo = error(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})
    caplog.set_level(logging.DEBUG)
    async with WireServer(echo, Reply(chunks=openai_chunks(["fine"]))) as srv:
        eng = engine(provider("openai", srv.url, retries=0), log_prompts=True)
        failed = await eng.complete(ask("hello"))
        eng2 = engine(provider("openai", srv.url), log_prompts=True)
        ok = await eng2.complete(ask("hello"))
        await eng.aclose()
        await eng2.aclose()
    assert ok.text == "fine"
    assert srv.seen[1].headers["authorization"] == f"Bearer {KEY}"  # it was sent
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "hello" in text  # log_prompts on: the prompt is there
    assert KEY not in text
    assert KEY not in str(failed)
    assert "[redacted]" in failed.fallbacks[0].detail
    metrics = eng.recorder.registry
    assert KEY.encode() not in generate_latest(metrics)
    assert KEY not in repr(eng.settings)
    assert KEY not in os.environ.get("TEST_LLM_KEY", "")  # the tests pass keys by mapping
    assert ENV["TEST_LLM_KEY"] == KEY


async def test_prompts_stay_out_of_the_log_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with WireServer(Reply(chunks=openai_chunks(["the secret plan"]))) as srv:
        eng = engine(provider("openai", srv.url))
        await eng.complete(ask("my private question"))
        await eng.aclose()
    calls = [r for r in caplog.records if r.getMessage() == "llm call"]
    assert len(calls) == 1
    record = calls[0].__dict__
    assert (record["provider"], record["outcome"], record["input_tokens"]) == ("openai", "ok", 10)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "my private question" not in text
    assert "the secret plan" not in text


async def test_check_reports_each_provider() -> None:
    async with WireServer(Reply(chunks=openai_chunks(["OK"]))) as srv:
        eng = engine(
            provider("openai", srv.url, name="local"),
            provider("ollama", f"http://127.0.0.1:{free_port()}", name="gone", key_env=""),
        )
        checks = await eng.check()
        await eng.aclose()
    assert [(c.provider, c.ok) for c in checks] == [
        ("local", True),
        ("gone", False),
        ("planner", True),
    ]
    assert checks[0].latency_ms is not None
    assert "unreachable" in checks[1].detail
    assert srv.seen[0].json()["max_tokens"] == 5


async def test_only_one_provider() -> None:
    eng = engine(provider("openai", f"http://127.0.0.1:{free_port()}", retries=0))
    response = await eng.complete(ask("hi"), only="planner")
    with pytest.raises(KeyError, match="no provider 'nope'"):
        await eng.complete(ask("hi"), only="nope")
    await eng.aclose()
    assert response.provider == "planner"
    assert response.fallbacks == ()


def test_provider_error_names_kind_and_status() -> None:
    exc = ProviderError("p", "rate_limited", "slow", status=429, retry_after=3)
    assert str(exc) == "p: rate_limited (HTTP 429): slow"
    assert exc.retryable
