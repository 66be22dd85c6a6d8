"""sd_notify messages arrive on a real unix datagram socket."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from amcp.runtime.sdnotify import Notifier
from amcp.runtime.service import Lifecycle, Service
from amcp.runtime.supervisor import ChildContext, ChildSpec, Supervisor


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(5)
        yield sock


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_notifier_sends_each_message(notify_socket: socket.socket) -> None:
    n = Notifier(notify_socket.getsockname())
    assert n.ready("up")
    assert _recv(notify_socket) == "READY=1\nSTATUS=up"
    n.watchdog()
    assert _recv(notify_socket) == "WATCHDOG=1"
    n.stopping()
    assert _recv(notify_socket) == "STOPPING=1"
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"cybernetic-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        n = Notifier("@" + name)
        n.status("hello")
        n.close()
        assert _recv(sock) == "STATUS=hello"


def test_silent_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready() is False


async def test_service_reports_ready_watchdog_and_stopping(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: pings every 0.05 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    async def worker(ctx: ChildContext) -> None:
        ctx.ready()
        await asyncio.Event().wait()

    svc = Service(
        Supervisor("root", [ChildSpec("w", worker, wait_ready=True)]),
        notifier=Notifier(notify_socket.getsockname()),
        status=lambda: "42 readings",
    )
    notify_socket.setblocking(False)
    task = asyncio.create_task(svc.run())
    loop = asyncio.get_running_loop()
    first = await asyncio.wait_for(loop.sock_recv(notify_socket, 4096), 5)
    assert first.decode() == "READY=1\nSTATUS=42 readings"
    assert svc.state is Lifecycle.RUNNING
    second = await asyncio.wait_for(loop.sock_recv(notify_socket, 4096), 5)
    assert second.decode() == "WATCHDOG=1"
    svc.request_stop()
    assert await asyncio.wait_for(task, 5) == 0
    msgs = []
    while True:
        try:
            msgs.append(notify_socket.recv(4096).decode())
        except BlockingIOError:
            break
    assert "STOPPING=1" in msgs
    assert svc.state is Lifecycle.STOPPED
