"""The pattern manager: checked documents, refusal with fallback, atomic swaps, carried state."""

from __future__ import annotations

import pytest

from amcp.goldrush import encode, parse
from gateway.rules.manager import BuildRefusedError, PatternManager, Sourced, build_rules
from gateway.rules.model import (
    CommandAction,
    EventAction,
    PatternRule,
    SituationRule,
    WindowRule,
    decode_rule,
)

T = [0.0]


def clock() -> float:
    return T[0]


def src(**rules: PatternRule | WindowRule | SituationRule) -> dict[str, Sourced]:
    return {rid: Sourced(rule, "store") for rid, rule in rules.items()}


def ev(device: str = "d1", **values: object) -> dict[str, object]:
    return {**values, "device": device, "values": values}


def test_patterns_windows_and_situations_compile_with_their_actions() -> None:
    docs = src(
        hot=PatternRule(when="temp > 30 => alert"),
        hot3=WindowRule(pattern="hot", count=3, within_s=10, actions=["algedonic"]),
        fan=decode_rule(b'{"type":"pattern","when":%s}' % encode(parse("rpm < 100"))),  # an AST
        both=SituationRule(
            when="exists(fired.hot3) and exists(fired.hot)",
            actions=[CommandAction(action="cool")],
        ),
    )
    result = build_rules(docs, {}, {}, clock=clock)
    assert result.refused == []
    rules = result.rules
    assert set(rules.entries) == {"hot", "hot3", "fan", "both"}
    assert rules.entries["hot"].actions == (EventAction(severity="warning"),)
    assert rules.entries["hot3"].kind == "window"
    assert rules.entries["both"].actions == (CommandAction(action="cool"),)
    fired: list[str] = []
    for i in range(3):
        T[0] = float(i)
        fired += rules.engine.process(ev(temp=31))
    assert fired.count("hot") == 3
    assert fired.count("hot3") == 1
    assert fired.count("both") == 1


def test_a_pattern_given_as_an_ast_is_accepted() -> None:
    rules = build_rules(src(p=PatternRule(when=parse("temp > 1"))), {}, {}, clock=clock).rules
    assert rules.engine.process(ev(temp=2)) == ["p"]


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        (PatternRule(when="temp >"), "ParseError"),
        (PatternRule(when="name matches '('"), "bad regex"),
        (PatternRule(when="not " * 5000 + "x > 1"), "Error"),
        (PatternRule(when="temp > 1", actions=["no-such-action"]), "unknown action"),
        (PatternRule(when="temp > 1 => nope"), "unknown action"),
        (WindowRule(pattern="ghost", count=2, within_s=1), "unknown pattern"),
        (SituationRule(when="exists(fired."), "ParseError"),
    ],
)
def test_a_bad_document_is_refused_and_the_others_still_build(
    rule: PatternRule | WindowRule | SituationRule, fragment: str
) -> None:
    docs = src(ok=PatternRule(when="temp > 1"), bad=rule)
    result = build_rules(docs, {}, {}, clock=clock)
    assert [r.rule_id for r in result.refused] == ["bad"]
    assert fragment in result.refused[0].error
    assert result.refused[0].kept_previous is False
    assert set(result.rules.entries) == {"ok"}


def test_a_refused_document_keeps_the_previous_definition_of_its_id() -> None:
    good = {"p": PatternRule(when="temp > 50")}
    result = build_rules(src(p=PatternRule(when="temp >>> 5")), {}, good, clock=clock)
    assert result.refused[0].kept_previous
    assert result.refused[0].line == 1
    assert result.refused[0].column is not None
    assert result.rules.engine.process(ev(temp=60)) == ["p"]
    assert result.rules.engine.process(ev(temp=10)) == []


def test_a_window_on_a_refused_pattern_is_refused_too() -> None:
    docs = src(p=PatternRule(when="temp >"), w=WindowRule(pattern="p", count=2, within_s=5))
    result = build_rules(docs, {}, {}, clock=clock)
    assert sorted(r.rule_id for r in result.refused) == ["p", "w"]
    assert len(result.rules) == 0


def test_disabled_rules_are_left_out() -> None:
    docs = src(p=PatternRule(when="true", enabled=False))
    assert len(build_rules(docs, {}, {}, clock=clock).rules) == 0


def test_a_set_that_cannot_be_built_as_a_whole_is_refused() -> None:
    """A failure no single rule explains (here a carried set that breaks) refuses the set."""
    with pytest.raises(BuildRefusedError):
        build_rules(src(p=PatternRule(when="true")), {}, {}, clock=clock, carry=_Broken())  # type: ignore[arg-type]


class _Broken:
    @property
    def engine(self) -> object:
        raise RuntimeError("broken")


async def test_a_broken_pattern_leaves_the_running_set_in_place() -> None:
    mgr = PatternManager({}, clock)
    docs = src(hot=PatternRule(when="temp > 30"))
    await mgr.apply(docs)
    running = mgr.active
    assert running.engine.process(ev(temp=31)) == ["hot"]
    result, fresh = await mgr.apply(src(hot=PatternRule(when="temp >")))
    assert [r.rule_id for r in fresh] == ["hot"]
    assert fresh[0].kept_previous
    assert not result.swapped
    assert mgr.active is running  # the very same set object, still counting
    assert running.engine.patterns.counters("hot").matched == 1
    # the same bad document again is not reported twice
    _, again = await mgr.apply(src(hot=PatternRule(when="temp >")))
    assert again == []
    # a fixed document replaces it
    result, fresh = await mgr.apply(src(hot=PatternRule(when="temp > 40")))
    assert result.swapped
    assert fresh == []
    assert mgr.active.engine.process(ev(temp=35)) == []


async def test_counters_and_window_history_survive_a_swap_of_other_rules() -> None:
    mgr = PatternManager({}, clock)
    base = {
        "hot": PatternRule(when="temp > 30"),
        "hot3": WindowRule(pattern="hot", count=3, within_s=100),
    }
    await mgr.apply(src(**base))
    T[0] = 1.0
    mgr.active.engine.process(ev(temp=31))
    mgr.active.engine.process(ev(temp=31))
    await mgr.apply(src(**base, other=PatternRule(when="cpu > 1")))
    T[0] = 2.0
    assert "hot3" in mgr.active.engine.process(ev(temp=31))  # third match, after the swap
    assert mgr.active.engine.patterns.counters("hot").matched == 3
    assert mgr.active.engine.patterns.counters("hot").input == 3


async def test_a_changed_pattern_restarts_the_windows_that_watch_it() -> None:
    mgr = PatternManager({}, clock)
    win = WindowRule(pattern="hot", count=2, within_s=100)
    await mgr.apply(src(hot=PatternRule(when="temp > 30"), w=win))
    mgr.active.engine.process(ev(temp=31))
    await mgr.apply(src(hot=PatternRule(when="temp > 20"), w=win))
    assert "w" not in mgr.active.engine.process(ev(temp=31))
    assert "w" in mgr.active.engine.process(ev(temp=31))


async def test_a_deleted_rule_does_not_come_back_as_a_fallback() -> None:
    mgr = PatternManager({}, clock)
    await mgr.apply(src(p=PatternRule(when="temp > 1")))
    await mgr.apply({})
    assert "p" not in mgr.good
    result, fresh = await mgr.apply(src(p=PatternRule(when="temp >")))
    assert not fresh[0].kept_previous
    assert len(result.rules) == 0
