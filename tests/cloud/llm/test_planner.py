"""The built-in planner: deterministic answers from rules that pass the same checks as any."""

from __future__ import annotations

import pytest

from cloud.llm import Engine, LlmSettings, Message, Request, TaskDataError
from cloud.llm.planner import decide, free_text
from cloud.llm.tasks import TASKS
from cloud.llm.validate import check_value
from wasm.parser import parse

CAPS = [
    {"name": "valve.close", "description": "close a water valve"},
    {"name": "thermostat.set", "description": "set the target temperature"},
    "fan.on",
]


def test_classify_picks_the_label_sharing_most_words() -> None:
    labels = [
        {"name": "leak", "keywords": ["water", "wet", "drip"]},
        {"name": "overheat", "keywords": ["hot", "temperature", "fire"]},
        "other",
    ]
    answer = decide("classify", {"text": "Water is dripping under the pump", "labels": labels})
    assert answer["label"] == "leak"
    assert answer["confidence"] == 1.0
    assert "water" in answer["reason"]
    none = decide("classify", {"text": "zzz", "labels": labels})
    assert none == {
        "label": None,
        "confidence": 0.0,
        "reason": "no label's words appear in the text",
    }


def test_decompose_splits_the_goal_and_maps_capabilities() -> None:
    answer = decide(
        "decompose",
        {
            "goal": "Close the valve, then set the temperature to 18; call the plumber",
            "capabilities": CAPS,
        },
    )
    assert answer["steps"] == [
        {"capability": "valve.close", "instruction": "Close the valve"},
        {"capability": "thermostat.set", "instruction": "set the temperature to 18"},
        {"capability": None, "instruction": "call the plumber"},
    ]
    assert answer["unmatched"] == ["call the plumber"]


@pytest.mark.parametrize(
    ("anomaly", "action", "needle"),
    [
        ({"kind": "flood", "device": "s-1", "rate_per_s": 50}, "rate_limit", "rate(1s) > 25.0"),
        ({"kind": "flood", "zone": "cold", "limit_per_s": 2}, "rate_limit", 'zone == "cold"'),
        (
            {
                "kind": "out_of_range",
                "device": "s-2",
                "metric": "temp",
                "value": -80,
                "threshold": -60,
            },
            "drop_readings",
            "temp < -60.0",
        ),
        ({"kind": "stuck", "device": "s-3"}, "flag_readings", "then flag"),
        ({"kind": "tamper", "device": "s-4", "gateway": "gw-1"}, "quarantine", 'device == "s-4"'),
        ({"kind": "zombie", "device": "s-5"}, "notify", ""),
    ],
)
def test_mitigations_are_policies_that_compile(
    anomaly: dict[str, object], action: str, needle: str
) -> None:
    answer = decide("mitigate", anomaly)
    assert answer["action"] == action
    assert check_value(answer, TASKS["mitigate"].schema(TASKS["mitigate"].parse(anomaly))) == ""
    if needle:
        assert needle in answer["policy"]
        policy = parse(answer["policy"])
        assert policy.default == "allow"
        assert len(policy.rules) == 1
    else:
        assert answer["policy"] == ""


def test_review_policy_findings() -> None:
    good = 'policy "p" version 1\nrule hot when temp > 30 then flag because "hot"\n'
    assert decide("review_policy", {"source": good}) == {"verdict": "approve", "findings": []}
    shadow = (
        "rule all when true then flag\nrule hot when temp > 30 then deny\n"
        "rule cold when false then deny"
    )
    answer = decide("review_policy", {"source": shadow})
    assert answer["verdict"] == "revise"
    messages = [(f["rule"], f["message"]) for f in answer["findings"]]
    assert ("all", "always matches, so the rules after it never run: hot, cold") in messages
    assert ("cold", "never matches") in messages
    closed = decide("review_policy", {"source": "default deny\nrule x when temp > 1 then deny"})
    assert closed["verdict"] == "reject"
    broken = decide("review_policy", {"source": "rule when when"})
    assert broken["verdict"] == "reject"
    assert "does not compile" in broken["findings"][0]["message"]


def test_bad_data_is_a_typed_error_naming_the_field() -> None:
    with pytest.raises(TaskDataError, match=r"labels"):
        decide("classify", {"text": "x"})
    with pytest.raises(TaskDataError, match=r"\$.value"):
        decide("mitigate", {"kind": "flood", "value": "high"})
    with pytest.raises(TaskDataError, match="no such task"):
        decide("summon", {})


async def test_the_same_data_gives_the_same_answer_through_the_engine() -> None:
    engine = Engine.from_settings(LlmSettings(cache_entries=0))
    data = {"text": "fan is too loud", "labels": ["fan.on", "valve.close"]}
    answers = [await engine.run_task("classify", data) for _ in range(3)]
    await engine.aclose()
    assert all(a.value == answers[0].value for a in answers)
    assert all(a.provider == "planner" for a in answers)
    assert answers[0].value["label"] == "fan.on"


async def test_free_text_names_the_closest_task() -> None:
    assert "review_policy request" in free_text("please review this policy")
    engine = Engine.from_settings(LlmSettings())
    chunks = [c async for c in engine.stream(_ask("how do I mitigate a flood?"))]
    await engine.aclose()
    assert "mitigate request" in chunks[0].text  # type: ignore[union-attr]


def _ask(text: str) -> Request:
    return Request(messages=(Message(role="user", content=text),))
