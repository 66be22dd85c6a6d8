"""The operations HTTP endpoint: Prometheus metrics, liveness and readiness.

One small standard-library HTTP server per daemon (docs/operations.md) serves:

- ``/metrics``: the registry in the Prometheus text format (OpenMetrics when asked, gzip when
  accepted, ``?name[]=`` to restrict);
- ``/healthz``: liveness. 200 while the daemon's event loop answers, 503 when it does not
  answer within ``answer_timeout`` (a loop blocked or gone: restart the process);
- ``/readyz``: readiness. 200 when every registered check passes, else 503 with a short JSON
  body naming each failing check and why;
- anything else: 404.

The server runs in its own thread. When started from a running event loop, the liveness
probe and the readiness checks run *on that loop* (so a check may read the daemon's state
without locks, and a blocked loop fails both probes); a check must be quick and must not block.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import choose_encoder, gzip_accepted

from amcp import __version__

log = logging.getLogger(__name__)
T = TypeVar("T")

CheckResult = tuple[bool, str]
"""(passes, detail): one readiness check's answer; the detail is a short phrase."""
Check = Callable[[], "CheckResult | bool"]
ReadyFn = Callable[[], Mapping[str, CheckResult]]
"""What :class:`MetricsServer` calls for ``/readyz``: check name → (passes, detail)."""

ANSWER_TIMEOUT_S = 2.0
"""How long the event loop gets to answer a probe before it counts as not answering."""
PATHS = ("/metrics", "/healthz", "/readyz", "/status")


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` or ``"[::1]:9464"`` → (host, port)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def register_build_info(
    registry: CollectorRegistry, component: str, version: str = __version__
) -> Gauge:
    """``cybernetic_build_info{component, version, python} 1`` on ``registry``."""
    gauge = Gauge(
        "cybernetic_build_info",
        "Always 1; its labels name the running build: component (gateway or cloud), the "
        "cybernetic-edge version and the Python version",
        ["component", "version", "python"],
        registry=registry,
    )
    python = ".".join(str(n) for n in sys.version_info[:3])
    gauge.labels(component, version, python).set(1)
    return gauge


def condition(holds: Callable[[], bool], passing: str, failing: str) -> Check:
    """A check from a bool: ``(True, passing)`` while ``holds()``, else ``(False, failing)``."""

    def check() -> CheckResult:
        return (True, passing) if holds() else (False, failing)

    return check


class Readiness:
    """Named readiness checks, callable as a :data:`ReadyFn`.

    A check returns ``(passes, detail)`` or a bare bool. One that raises fails, with the
    exception as its detail, and never takes the others down.
    """

    def __init__(self, checks: Mapping[str, Check] | None = None) -> None:
        self._checks: dict[str, Check] = dict(checks or {})

    def add(self, name: str, check: Check) -> None:
        """Register (or replace) the check ``name``."""
        self._checks[name] = check

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    def __call__(self) -> dict[str, CheckResult]:
        out: dict[str, CheckResult] = {}
        for name, check in list(self._checks.items()):
            try:
                answer = check()
            except Exception as exc:
                out[name] = (False, f"check raised {type(exc).__name__}: {exc}"[:200])
                continue
            if isinstance(answer, bool):
                out[name] = (answer, "ok" if answer else "failing")
            else:
                ok, detail = answer
                out[name] = (bool(ok), str(detail))
        return out


class _NoAnswerError(Exception):
    """The event loop did not answer a probe (blocked, stopped or closed)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, owner: Any) -> None:
        self.address_family = family
        self.owner: MetricsServer = owner
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle kept-alive connection is closed (and its thread ends) after this

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Requests are not logged (Prometheus scrapes every few seconds)."""

    def _serve(self, *, head: bool) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        try:
            if url.path == "/metrics":
                status, headers, body = owner.metrics_response(
                    self.headers.get("Accept", ""),
                    self.headers.get("Accept-Encoding", ""),
                    parse_qs(url.query),
                )
            elif url.path == "/healthz":
                status, headers, body = owner.liveness_response()
            elif url.path == "/readyz":
                status, headers, body = owner.readiness_response()
            elif url.path == "/status":
                status, headers, body = owner.status_response()
            else:
                status, headers, body = _json(
                    HTTPStatus.NOT_FOUND, {"error": "not found", "paths": list(PATHS)}
                )
        except Exception as exc:  # a broken collector must not kill the endpoint
            log.warning(
                "operations endpoint failed",
                extra={"path": url.path, "error": f"{type(exc).__name__}: {exc}"},
            )
            status, headers, body = _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal"})
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


Response = tuple[int, list[tuple[str, str]], bytes]


def _json(status: int, doc: Any) -> Response:
    body = (json.dumps(doc, sort_keys=True) + "\n").encode()
    return status, [("Content-Type", "application/json")], body


class MetricsServer:
    """Serves ``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` for ``registry`` until
    :meth:`close`.

    ``ready`` answers ``/readyz`` (a :class:`Readiness` or any callable returning check name →
    (passes, detail)); without it the daemon is ready whenever it is live. ``status()`` makes
    the JSON document ``/status`` serves (with the checks added).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        listen: str,
        *,
        ready: ReadyFn | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        answer_timeout: float = ANSWER_TIMEOUT_S,
    ) -> None:
        self.registry = registry
        self.host, self.port = parse_listen(listen)
        self.ready = ready
        self.status = status
        self.answer_timeout = answer_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Listen and serve in a thread. Probes run on ``loop``, by default the running loop
        (none: they run in the server's thread and liveness only proves the process)."""
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop = loop
        family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
        self._server = _Server((self.host, self.port), family, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info(
            "metrics listening",
            extra={"host": self.host, "port": self.port, "paths": ",".join(PATHS)},
        )

    def close(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # -- the three answers (called in the server's thread) -------------------------------

    def metrics_response(
        self, accept: str, accept_encoding: str, params: Mapping[str, list[str]]
    ) -> Response:
        encoder, content_type = choose_encoder(accept)
        registry: Any = self.registry
        names = params.get("name[]")
        if names:
            registry = self.registry.restricted_registry(names)
        body = encoder(registry)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(accept_encoding):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        return HTTPStatus.OK, headers, body

    def liveness_response(self) -> Response:
        try:
            self._on_loop(lambda: None)
        except _NoAnswerError as exc:
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "not live", "error": str(exc)})
        return _json(HTTPStatus.OK, {"status": "live"})

    def readiness_response(self) -> Response:
        ready = self.ready
        try:
            results = self._on_loop(ready) if ready is not None else {}
        except _NoAnswerError as exc:
            results = {"event_loop": (False, str(exc))}
        except Exception as exc:
            results = {"checks": (False, f"readiness raised {type(exc).__name__}: {exc}"[:200])}
        failing = {name: detail for name, (ok, detail) in results.items() if not ok}
        if failing:
            return _json(
                HTTPStatus.SERVICE_UNAVAILABLE, {"status": "not ready", "failing": failing}
            )
        passing = {name: detail for name, (_, detail) in results.items()}
        return _json(HTTPStatus.OK, {"status": "ready", "checks": passing})

    def status_response(self) -> Response:
        """``/status``: the daemon's own report (``cybernetic status`` reads it) with the
        readiness checks, taken on the event loop like the probes."""
        report = self.status
        try:
            doc = self._on_loop(report) if report is not None else {}
            checks = self._on_loop(self.ready) if self.ready is not None else {}
        except _NoAnswerError as exc:
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "not live", "error": str(exc)})
        doc["ready"] = all(ok for ok, _ in checks.values())
        doc["checks"] = {
            name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()
        }
        return _json(HTTPStatus.OK, doc)

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the daemon's event loop, waiting at most ``answer_timeout``."""
        loop = self._loop
        if loop is None:
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError as exc:  # the loop is closed
            raise _NoAnswerError("event loop closed") from exc
        try:
            return future.result(self.answer_timeout)
        except TimeoutError:
            if future.done():  # fn itself raised it
                raise
            future.cancel()
            raise _NoAnswerError(
                f"event loop did not answer within {self.answer_timeout:g} s"
            ) from None
