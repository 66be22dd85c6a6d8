"""Where a zombie device's capabilities go (S1's side of S2's reassignment hook)."""

from __future__ import annotations

from gateway.s1 import plan_moves


def test_each_capability_of_the_zombie_goes_to_its_first_healthy_standby() -> None:
    carriers = {
        "pump.start": ("pump-1", ["pump-2", "pump-3"]),
        "pump.stop": ("pump-1", ["pump-3"]),
        "valve.open": ("valve-1", ["valve-2"]),  # not the zombie's: stays
        "door.lock": ("pump-1", []),  # no standby: stays
    }
    moves = plan_moves(carriers, "pump-1", healthy=lambda d: d != "pump-2")
    assert moves == {
        "pump.start": ("pump-3", ["pump-2", "pump-1"]),
        "pump.stop": ("pump-3", ["pump-1"]),
    }


def test_nothing_moves_when_every_standby_is_down_too() -> None:
    carriers = {"pump.start": ("pump-1", ["pump-2"])}
    assert plan_moves(carriers, "pump-1", healthy=lambda _: False) == {}


def test_the_zombie_never_becomes_its_own_standby_target() -> None:
    carriers = {"pump.start": ("pump-1", ["pump-1", "pump-2"])}
    assert plan_moves(carriers, "pump-1", healthy=lambda _: True) == {
        "pump.start": ("pump-2", ["pump-1"])
    }
