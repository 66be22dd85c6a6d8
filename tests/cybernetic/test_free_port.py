"""free_port hands out ports no listener, outgoing connection or other test worker can take."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cybernetic import mosquitto
from cybernetic.mosquitto import free_port


def _ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(p < low for p in ports)


def test_workers_get_disjoint_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    slices = []
    for worker in ("gw0", "gw1", "gw2", "gw3"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(set(mosquitto._port_slice()))
    for i, a in enumerate(slices):
        for b in slices[i + 1 :]:
            assert not a & b


def test_a_port_someone_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw5")
    taken = mosquitto._port_slice()
    listeners = []
    try:
        for port in taken[:-1]:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.listen()
            listeners.append(s)
        assert len(listeners) > len(taken) // 2
        assert free_port() == taken[-1]  # the one port of the slice left unbound
    finally:
        for s in listeners:
            s.close()
