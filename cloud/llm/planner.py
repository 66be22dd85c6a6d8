"""The built-in planner: the default provider, deterministic, offline, with no key.

It answers the engine's structured requests from rules and the data it is given, so every
feature that asks the engine works without a model (``make demo``, tests, an air-gapped
site). The same answer always follows from the same data. What each task does:

- ``classify``: the label whose name, keywords and description share the most words with the
  text (name and keyword words count twice); none shares a word: no label, confidence 0.
- ``decompose``: the goal split into clauses (at ``;``, ``,``, ``then`` and ``and``), each
  classified against the capabilities; a clause no capability matches is listed unmatched.
- ``mitigate``: a rule per anomaly kind: a flood is rate-limited (to its limit, else half its
  rate), a value out of range is dropped, a stuck sensor flagged, a security event
  (auth_failure, replay, tamper, intrusion) quarantined, anything else notified; with a
  policy in the policy language that does it, printed from its syntax tree (so it compiles).
- ``review_policy``: the policy parsed and looked at: a syntax error (a duplicate rule name
  included) rejects it; a rule that always matches hides the rules after it; a rule that
  never matches; ``default deny`` with nothing let through rejects (it drops every reading).

A request without a task (``cybernetic llm ask``) gets a short text saying what the planner
does and which task the question looks like.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any, Literal

import msgspec

from cloud.llm.settings import PLANNER
from cloud.llm.tasks import (
    AnomalyData,
    Capability,
    ClassifyData,
    DecomposeData,
    Label,
    PolicyData,
    spec,
)
from cloud.llm.types import Chunk, Done, Request, TextDelta, Usage
from wasm import ast
from wasm.errors import PolicySyntaxError
from wasm.parser import parse

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    (
        *("a", "an", "the", "of", "to", "in", "on", "at", "for", "and", "or", "is", "are"),
        *("be", "it", "this", "that", "with", "from", "by", "as", "its", "into", "please"),
        *("all", "any", "each", "my", "our", "your", "me", "us"),
    )
)
_SPLIT = re.compile(r"\s*(?:;|,\s*and then\s+|,\s*then\s+|\band then\b|\bthen\b|,|\band\b)\s*")


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def words(text: str) -> list[str]:
    """Lower-case word stems of ``text`` without stop words (``.``, ``_``, ``-`` split)."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


@functools.lru_cache(maxsize=256)
def _terms(name: str, keywords: tuple[str, ...], description: str) -> dict[str, int]:
    weights = dict.fromkeys(words(description), 1)
    for w in (*words(name), *(x for k in keywords for x in words(k))):
        weights[w] = 2
    return weights


def _score(text_words: Iterable[str], terms: dict[str, int]) -> tuple[int, list[str]]:
    matched = [w for w in dict.fromkeys(text_words) if w in terms]
    return sum(terms[w] for w in matched), matched


def _best(
    text: str, options: Sequence[tuple[str, tuple[str, ...], str]]
) -> tuple[str | None, float, list[str]]:
    """(name, confidence, matched words) of the best option; ties go to the first."""
    tw = words(text)
    best: tuple[int, str | None, list[str]] = (0, None, [])
    total = 0
    for name, keywords, description in options:
        score, matched = _score(tw, _terms(name, keywords, description))
        total += score
        if score > best[0]:
            best = (score, name, matched)
    score, winner, matched = best
    return winner, (round(score / total, 3) if total else 0.0), matched


def _label(x: str | Label) -> tuple[str, tuple[str, ...], str]:
    return (x, (), "") if isinstance(x, str) else (x.name, x.keywords, x.description)


def _capability(x: str | Capability) -> tuple[str, tuple[str, ...], str]:
    return (x, (), "") if isinstance(x, str) else (x.name, (), x.description)


def classify(data: ClassifyData) -> dict[str, Any]:
    name, confidence, matched = _best(data.text, [_label(x) for x in data.labels])
    reason = f"matched {', '.join(matched)}" if name else "no label's words appear in the text"
    return {"label": name, "confidence": confidence, "reason": reason}


def decompose(data: DecomposeData) -> dict[str, Any]:
    options = [_capability(x) for x in data.capabilities]
    steps: list[dict[str, Any]] = []
    unmatched: list[str] = []
    for clause in (c.strip(" .") for c in _SPLIT.split(data.goal)):
        if not clause:
            continue
        name, _, _ = _best(clause, options)
        steps.append({"capability": name, "instruction": clause})
        if name is None:
            unmatched.append(clause)
    return {"steps": steps, "unmatched": unmatched}


SECURITY = frozenset({"auth_failure", "replay", "tamper", "intrusion"})
FLOOD = frozenset({"flood", "rate"})
RANGE = frozenset({"out_of_range", "impossible", "spike"})


def _ident(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_").lower() or "all"


def _device_test(device: str) -> ast.BoolExpr:
    return ast.StrTest("device", "==", (device,)) if device else ast.Const(value=True)


def _policy(kind: str, a: AnomalyData, rule: ast.Rule) -> str:
    name = f"mitigate-{_ident(kind)}-{_ident(a.device or a.zone or a.gateway)}"
    if a.zone and not a.device:
        rule = ast.Rule(
            rule.name,
            ast.And(ast.StrTest("zone", "==", (a.zone,)), rule.when),
            rule.action,
            rule.reason,
        )
    policy = ast.Policy(name, 1, "allow", "no mitigation applies", (rule,))
    return ast.to_source(policy)


def mitigate(a: AnomalyData) -> dict[str, Any]:
    kind = a.kind.lower()
    who = a.device or a.zone or a.gateway or "the fleet"
    rate: float | None = None
    policy = ""
    rule_name = f"{_ident(kind)}_{_ident(a.device)}"
    if kind in FLOOD:
        rate = a.limit_per_s or (a.rate_per_s / 2 if a.rate_per_s else 1.0)
        action, severity = "rate_limit", "warning"
        reason = f"{who} floods ({a.rate_per_s or 'unknown'}/s): limit it to {rate:g}/s"
        when = ast.And(_device_test(a.device), ast.Compare(">", ast.Rate(1000), ast.Num(rate)))
        policy = _policy(kind, a, ast.Rule(rule_name, when, "deny", reason))
    elif kind in RANGE and a.metric and a.threshold is not None:
        action, severity = "drop_readings", "warning"
        op: Literal["<", ">"] = "<" if a.value is not None and a.value < a.threshold else ">"
        reason = f"{who}: {a.metric} {op} {a.threshold:g} is out of range: drop such readings"
        test = ast.Compare(op, ast.Field(a.metric), ast.Num(a.threshold))
        when = ast.And(_device_test(a.device), test)
        policy = _policy(kind, a, ast.Rule(rule_name, when, "deny", reason))
    elif kind == "stuck":
        action, severity = "flag_readings", "info"
        reason = f"{who} repeats one value: flag its readings until it is checked"
        policy = _policy(kind, a, ast.Rule(rule_name, _device_test(a.device), "flag", reason))
    elif kind in SECURITY:
        action, severity = "quarantine", "critical"
        reason = f"{who}: {kind}: refuse its readings until an operator clears it"
        policy = _policy(kind, a, ast.Rule(rule_name, _device_test(a.device), "deny", reason))
    else:
        action, severity = "notify", "info"
        reason = f"{who}: {kind}: no automatic mitigation; tell the operators"
    return {
        "action": action,
        "target": {"gateway": a.gateway, "device": a.device, "zone": a.zone},
        "rate_per_s": rate,
        "policy": policy,
        "reason": reason,
        "severity": severity,
    }


def _always(node: ast.BoolExpr) -> bool | None:  # noqa: PLR0911 - one arm per node
    """True/False when ``node`` is constant, else None."""
    match node:
        case ast.Const(value):
            return value
        case ast.Not(operand):
            inner = _always(operand)
            return None if inner is None else not inner
        case ast.And(left, right):
            lv, rv = _always(left), _always(right)
            if lv is False or rv is False:
                return False
            return True if lv and rv else None
        case ast.Or(left, right):
            lv, rv = _always(left), _always(right)
            if lv or rv:
                return True
            return False if lv is False and rv is False else None
    return None


def review_policy(data: PolicyData) -> dict[str, Any]:
    try:
        policy = parse(data.source, "<policy under review>")
    except PolicySyntaxError as exc:
        finding = {"severity": "error", "rule": "", "message": f"does not compile: {exc}"}
        return {"verdict": "reject", "findings": [finding]}
    findings: list[dict[str, Any]] = []
    for i, rule in enumerate(policy.rules):
        always = _always(rule.when)
        if always is False:
            findings.append({"severity": "warning", "rule": rule.name, "message": "never matches"})
        elif always is True and i + 1 < len(policy.rules):
            hidden = ", ".join(r.name for r in policy.rules[i + 1 :])
            findings.append(
                {
                    "severity": "warning",
                    "rule": rule.name,
                    "message": f"always matches, so the rules after it never run: {hidden}",
                }
            )
    lets_through = any(r.action != "deny" for r in policy.rules)
    if policy.default == "deny" and not lets_through:
        findings.append(
            {
                "severity": "error",
                "rule": "",
                "message": "default deny and no rule allows, flags or transforms: "
                "every reading is dropped",
            }
        )
    if not policy.rules:
        findings.append(
            {"severity": "info", "rule": "", "message": "no rules: the default decides"}
        )
    worst = {f["severity"] for f in findings}
    verdict = "reject" if "error" in worst else "revise" if "warning" in worst else "approve"
    return {"verdict": verdict, "findings": findings}


RULES: dict[str, Any] = {
    "classify": classify,
    "decompose": decompose,
    "mitigate": mitigate,
    "review_policy": review_policy,
}
_TASK_WORDS = ClassifyData(
    text="",
    labels=(
        Label("classify", ("classify", "category", "label", "kind", "which", "intent")),
        Label("decompose", ("decompose", "plan", "steps", "split", "break", "how")),
        Label("mitigate", ("mitigate", "anomaly", "attack", "flood", "fix", "stop", "alarm")),
        Label("review_policy", ("review", "policy", "rule", "check", "audit")),
    ),
)


def decide(task: str, data: dict[str, Any]) -> dict[str, Any]:
    """The planner's answer to one structured request (data checked like a person's)."""
    answer: dict[str, Any] = RULES[spec(task).name](spec(task).parse(data))
    return answer


def free_text(question: str) -> str:
    guess = classify(msgspec.structs.replace(_TASK_WORDS, text=question))["label"]
    closest = f" This question looks like a {guess} request." if guess else ""
    return (
        "The built-in planner (no model configured, or none answered) answers structured "
        "requests only: classify, decompose, mitigate and review_policy."
        f"{closest} Configure a provider in [llm] for free-form answers (docs/llm.md)."
    )


class Planner:
    """The planner behind the provider seam: the answer as one JSON text chunk."""

    name = PLANNER
    kind = "builtin"
    model = "rules"
    context_window = 1 << 30
    max_output_tokens = 1 << 20
    timeout_s = 5.0

    async def stream(self, request: Request) -> AsyncGenerator[Chunk, None]:
        if request.task is not None:
            text = msgspec.json.encode(decide(request.task.name, request.task.data)).decode()
        else:
            last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
            text = free_text(last)
        yield TextDelta(text)
        yield Usage(0, 0)
        yield Done("stop")

    async def aclose(self) -> None:
        return None
