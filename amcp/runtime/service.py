"""Run a supervision tree as a daemon: signals, lifecycle state, sd_notify, watchdog.

SIGTERM and SIGINT start a staged shutdown (children stop in reverse start order, each within
its own timeout, the whole within ``stop_timeout``); SIGHUP calls the reload hook (configuration
re-read). READY is sent to systemd once every child of the root reported ready; WATCHDOG pings
come from the event loop itself, so a wedged loop stops them and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from amcp import __version__
from amcp.runtime.logs import log_shutdown, log_startup, setup_logging
from amcp.runtime.sdnotify import Notifier, watchdog_interval
from amcp.runtime.settings import LogSettings
from amcp.runtime.supervisor import ChildContext, EscalationError, Supervisor

log = logging.getLogger(__name__)


class Lifecycle(enum.StrEnum):
    INITIALIZING = "initializing"
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class Service:
    def __init__(
        self,
        root: Supervisor,
        *,
        notifier: Notifier | None = None,
        reload: Callable[[], Awaitable[None]] | None = None,
        status: Callable[[], str] | None = None,
        stop_timeout: float = 60.0,
        status_interval: float = 10.0,
    ) -> None:
        self.root = root
        self.notifier = notifier or Notifier()
        self._reload = reload
        self._status = status
        self.stop_timeout = stop_timeout
        self.status_interval = status_interval
        self.state = Lifecycle.INITIALIZING
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        if self._reload is None or (self._reloading and not self._reloading.done()):
            return
        self._reloading = asyncio.get_running_loop().create_task(self._do_reload())

    async def _do_reload(self) -> None:
        assert self._reload is not None
        self.state = Lifecycle.RELOADING
        self.notifier.reloading()
        try:
            await self._reload()
            log.info("configuration reloaded")
        except Exception as exc:
            log.exception("reload failed; keeping the running configuration")
            self.notifier.status(f"reload failed: {exc}")
        finally:
            self.state = Lifecycle.RUNNING
            self.notifier.ready()

    async def run(self) -> int:
        """Run until a stop signal (exit 0) or an escalation from the root (exit 1)."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig, handler in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
        self.state = Lifecycle.STARTING
        ctx = ChildContext(self.root.name)
        root_task = asyncio.create_task(self.root.run(ctx), name=f"root/{self.root.name}")
        stop_wait = asyncio.create_task(self._stop.wait())
        ready_wait = asyncio.create_task(ctx.wait_ready())
        helpers: list[asyncio.Task[None]] = []
        code = 0
        try:
            await asyncio.wait({root_task, stop_wait, ready_wait}, return_when="FIRST_COMPLETED")
            if ready_wait.done() and not root_task.done():
                self.state = Lifecycle.RUNNING
                self.notifier.ready(self._status() if self._status else "running")
                helpers.append(asyncio.create_task(self._watchdog()))
                helpers.append(asyncio.create_task(self._status_loop()))
                await asyncio.wait({root_task, stop_wait}, return_when="FIRST_COMPLETED")
            if root_task.done():
                exc = root_task.exception()
                self.state = Lifecycle.FAILED
                log.error("supervision tree failed", extra={"error": repr(exc)})
                self.notifier.status(f"failed: {exc!r}")
                code = 1
        finally:
            for task in (stop_wait, ready_wait, *helpers):
                task.cancel()
            if not root_task.done():
                self.state = Lifecycle.STOPPING
                self.notifier.stopping()
                root_task.cancel()
                try:
                    async with asyncio.timeout(self.stop_timeout):
                        with contextlib.suppress(asyncio.CancelledError, EscalationError):
                            await root_task
                except TimeoutError:
                    log.exception(
                        "shutdown exceeded its timeout", extra={"timeout_s": self.stop_timeout}
                    )
                    code = 1
            if self.state is not Lifecycle.FAILED:
                self.state = Lifecycle.STOPPED
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.notifier.close()
        return code

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _status_loop(self) -> None:
        if self._status is None:
            return
        while True:
            await asyncio.sleep(self.status_interval)
            self.notifier.status(self._status())


def run_loop(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:  # only the import: an ImportError inside main must not run it twice
        return asyncio.run(main())
    return uvloop.run(main())


class Daemon(Protocol):
    async def serve(self) -> int: ...


def run_daemon(
    component: str,
    node_id: str,
    config_path: object,
    log: LogSettings,
    build: Callable[[], Daemon],
) -> int:
    """A daemon's whole life for ``cybernetic gateway|cloud run``: logging set up, the start-up
    line, ``build()`` (a part that cannot start is one critical line and exit 1), the event
    loop, the shutdown line with the exit code."""
    setup_logging(log.level, fmt=log.format)
    log_startup(component, __version__, node_id, config_path)
    try:
        daemon = build()
    except (OSError, ValueError) as exc:
        logging.getLogger(component).critical(
            "%s cannot start", component, extra={"error": str(exc)}
        )
        log_shutdown(component, f"cannot start: {exc}", exit_code=1)
        return 1
    code = run_loop(daemon.serve)
    log_shutdown(component, "stop requested" if code == 0 else "supervisor gave up", exit_code=code)
    return code
