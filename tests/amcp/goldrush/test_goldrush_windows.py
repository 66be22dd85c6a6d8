"""Windows (sliding, tumbling, bounded state) and situations, on a hand-moved clock."""

from __future__ import annotations

import pytest

from amcp.goldrush import QueryError
from amcp.goldrush.situations import RuleEngine, SituationSpec
from amcp.goldrush.windows import Window, WindowSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_boundaries() -> None:
    win = Window(WindowSpec(pattern="hot", count=3, within_s=60))
    ev = {"device": "a"}
    assert not win.observe(ev, 0.0)
    assert not win.observe(ev, 30.0)
    assert not win.observe(ev, 60.0)  # 0, 30, 60: the first is exactly 60 s old: outside
    assert win.observe(ev, 89.9)  # 30, 60, 89.9 lie within 60 s
    assert win.fired == 1
    assert not win.observe(ev, 90.0)  # history restarts after firing
    assert not win.observe(ev, 91.0)
    assert win.observe(ev, 92.0)


def test_sliding_window_is_per_key() -> None:
    win = Window(WindowSpec(pattern="hot", count=2, within_s=10))
    assert not win.observe({"device": "a"}, 0.0)
    assert not win.observe({"device": "b"}, 1.0)
    assert not win.observe({}, 1.5)  # a missing key is its own key (None)
    assert win.observe({"device": "a"}, 2.0)
    assert not win.observe({"device": True}, 3.0)
    assert not win.observe({"device": 1}, 3.5)  # True and 1 are different keys
    assert not win.observe({"device": [1]}, 4.0)  # unhashable: not counted
    assert not win.observe({"device": [1]}, 4.0)


def test_tumbling_window_slots() -> None:
    win = Window(WindowSpec(pattern="hot", count=2, within_s=60, kind="tumbling"))
    ev = {"device": "a"}
    assert not win.observe(ev, 59.0)
    assert not win.observe(ev, 60.0)  # new slot [60, 120): the count restarts
    assert win.observe(ev, 119.9)
    assert not win.observe(ev, 119.95)  # fires once per slot
    assert not win.observe(ev, 120.0)
    assert win.observe(ev, 121.0)


def test_state_is_bounded() -> None:
    win = Window(WindowSpec(pattern="hot", count=2, within_s=60, max_keys=3))
    for i in range(10):
        win.observe({"device": f"d{i}"}, float(i))
    assert len(win) == 3
    assert win.evicted == 7
    assert not win.observe({"device": "d0"}, 10.0)  # d0 was evicted: starts again


def test_bad_specs() -> None:
    with pytest.raises(ValueError, match="count"):
        WindowSpec(pattern="p", count=0, within_s=1)
    with pytest.raises(ValueError, match="within_s"):
        WindowSpec(pattern="p", count=1, within_s=0)
    with pytest.raises(QueryError, match="unknown pattern"):
        RuleEngine.build({"p": "a > 1"}, windows={"w": WindowSpec("nope", 1, 1)})
    with pytest.raises(QueryError, match="twice"):
        RuleEngine.build({"p": "a > 1"}, windows={"p": WindowSpec("p", 1, 1)})


def test_engine_windows_and_situations() -> None:
    clock = Clock()
    engine = RuleEngine.build(
        {"hot": "temp > 90", "fan": "rpm < 100"},
        windows={"hot3": WindowSpec("hot", count=3, within_s=60)},
        situations={
            "meltdown": SituationSpec("exists(fired.hot3) and exists(fired.fan)", within_s=120),
            "alarm": SituationSpec("exists(fired.meltdown)", within_s=600),
        },
        clock=clock,
    )
    seen = []
    for t, ev in [
        (0, {"device": "a", "temp": 95}),
        (10, {"device": "a", "temp": 95}),
        (20, {"device": "b", "temp": 95}),
        (30, {"device": "a", "temp": 99}),
        (40, {"device": "b", "rpm": 5}),
        (50, {"device": "a", "rpm": 5}),
        (60, {"device": "a", "rpm": 5}),
        (400, {"device": "a", "rpm": 5}),
    ]:
        clock.now = t
        seen.append(engine.process(ev))
    assert seen == [
        ["hot"],
        ["hot"],
        ["hot"],
        ["hot", "hot3"],
        ["fan"],  # device b never had hot3
        ["fan", "meltdown", "alarm"],  # two facts make a situation; alarm sits on it
        ["fan"],  # still holding: raised once
        ["fan"],  # hot3 is too old now: meltdown re-arms, nothing raised
    ]
    assert engine.windows["hot3"].fired == 1
