"""The operations endpoint: /metrics, /healthz (liveness), /readyz (readiness), 404 elsewhere.

Real HTTP against the real server on a free port; the probes run on a real event loop."""

from __future__ import annotations

import asyncio
import gzip
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from amcp import __version__
from amcp.runtime.metrics import (
    MetricsServer,
    Readiness,
    condition,
    parse_listen,
    register_build_info,
)
from tests.needs import needs


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("cybernetic_test_things", "Things counted by the test", registry=registry).inc(3)
    Counter("cybernetic_test_other", "Other things", registry=registry).inc()
    return registry


@pytest.fixture
async def served() -> AsyncIterator[tuple[MetricsServer, Readiness, httpx.AsyncClient]]:
    checks = Readiness()
    server = MetricsServer(_registry(), "127.0.0.1:0", ready=checks, answer_timeout=0.5)
    server.start()  # from the running loop: the probes run on it
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", timeout=5
        ) as client:
            yield server, checks, client
    finally:
        server.close()


async def test_metrics_are_served_in_the_prometheus_format(
    served: tuple[MetricsServer, Readiness, httpx.AsyncClient],
) -> None:
    _, _, client = served
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# HELP cybernetic_test_things_total Things counted by the test" in r.text
    assert "cybernetic_test_things_total 3.0" in r.text


async def test_metrics_honour_openmetrics_gzip_and_name_filters(
    served: tuple[MetricsServer, Readiness, httpx.AsyncClient],
) -> None:
    _, _, client = served
    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
    async with client.stream("GET", "/metrics", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.headers["content-encoding"] == "gzip"
        body = b"".join([chunk async for chunk in r.aiter_raw()])
    assert b"cybernetic_test_other_total 1.0" in gzip.decompress(body)
    only = await client.get("/metrics", params={"name[]": "cybernetic_test_other_total"})
    assert "cybernetic_test_other_total 1.0" in only.text
    assert "cybernetic_test_things" not in only.text


async def test_healthz_answers_200_while_the_event_loop_runs(
    served: tuple[MetricsServer, Readiness, httpx.AsyncClient],
) -> None:
    _, _, client = served
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "live"}
    assert r.headers["content-type"] == "application/json"
    assert "cybernetic_" not in r.text


async def test_healthz_is_503_while_the_event_loop_is_blocked(
    served: tuple[MetricsServer, Readiness, httpx.AsyncClient],
) -> None:
    server, _, _ = served
    answers: list[httpx.Response] = []
    url = f"http://127.0.0.1:{server.port}"

    def probe() -> None:
        answers.append(httpx.get(f"{url}/healthz", timeout=5))
        answers.append(httpx.get(f"{url}/readyz", timeout=5))

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(1.5)  # noqa: ASYNC251 - blocks the loop on purpose: both probes time out
    thread.join(5)
    live, ready = answers
    assert live.status_code == 503
    assert live.json()["status"] == "not live"
    assert "did not answer within 0.5 s" in live.json()["error"]
    assert ready.status_code == 503
    assert "event_loop" in ready.json()["failing"]
    # and live again once the loop runs
    r = await asyncio.to_thread(httpx.get, f"{url}/healthz", timeout=5)
    assert r.status_code == 200


async def test_readyz_is_200_when_every_check_passes_and_names_them(
    served: tuple[MetricsServer, Readiness, httpx.AsyncClient],
) -> None:
    _, checks, client = served
    r = await client.get("/readyz")  # no checks yet: ready
    assert (r.status_code, r.json()) == (200, {"status": "ready", "checks": {}})
    checks.add("ingest", lambda: (True, "subscribed"))
    checks.add("store", lambda: True)
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"ingest": "subscribed", "store": "ok"}}


async def test_readyz_is_503_naming_only_the_failing_checks(
    served: tuple[MetricsServer, Readiness, httpx.AsyncClient],
) -> None:
    _, checks, client = served
    state = {"subscribed": False}
    checks.add("ingest", lambda: (state["subscribed"], "not subscribed on the local broker"))
    checks.add("outbox", lambda: (True, "0 rows"))
    checks.add("flag", lambda: False)

    def broken() -> tuple[bool, str]:
        raise RuntimeError("no database")

    checks.add("store", broken)
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {
        "status": "not ready",
        "failing": {
            "flag": "failing",
            "ingest": "not subscribed on the local broker",
            "store": "check raised RuntimeError: no database",
        },
    }
    state["subscribed"] = True
    checks.remove("flag")
    checks.remove("store")
    r = await client.get("/readyz")
    assert r.status_code == 200


async def test_checks_run_on_the_daemons_event_loop(
    served: tuple[MetricsServer, Readiness, httpx.AsyncClient],
) -> None:
    _, checks, client = served
    loop = asyncio.get_running_loop()
    seen: list[bool] = []

    def on_loop() -> bool:
        seen.append(asyncio.get_running_loop() is loop)
        return True

    checks.add("where", on_loop)
    assert (await client.get("/readyz")).status_code == 200
    assert seen == [True]


async def test_every_other_path_is_404(
    served: tuple[MetricsServer, Readiness, httpx.AsyncClient],
) -> None:
    _, _, client = served
    for path in ("/", "/health", "/metrics/x", "/readyz/", "/favicon.ico"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.json()["paths"] == ["/metrics", "/healthz", "/readyz", "/status"]
        assert "cybernetic_test" not in r.text
    assert (await client.head("/healthz")).status_code == 200
    assert (await client.head("/nothing")).status_code == 404
    assert (await client.post("/metrics")).status_code == 501


@pytest.fixture
def blocking_server() -> Iterator[MetricsServer]:
    server = MetricsServer(_registry(), "127.0.0.1:0")
    server.start()  # no running loop: the probes answer from the server's thread
    try:
        yield server
    finally:
        server.close()


def test_without_an_event_loop_probes_answer_from_the_server(
    blocking_server: MetricsServer,
) -> None:
    url = f"http://127.0.0.1:{blocking_server.port}"
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=5).json() == {"status": "ready", "checks": {}}
    assert "cybernetic_test_things_total 3.0" in httpx.get(f"{url}/metrics", timeout=5).text


def test_a_closed_event_loop_is_not_live() -> None:
    loop = asyncio.new_event_loop()
    server = MetricsServer(_registry(), "127.0.0.1:0", ready=lambda: {"x": (True, "ok")})
    server.start(loop)
    loop.close()
    try:
        url = f"http://127.0.0.1:{server.port}"
        live = httpx.get(f"{url}/healthz", timeout=5)
        assert live.status_code == 503
        assert live.json()["error"] == "event loop closed"
        ready = httpx.get(f"{url}/readyz", timeout=5)
        assert ready.json() == {
            "status": "not ready",
            "failing": {"event_loop": "event loop closed"},
        }
    finally:
        server.close()


def test_a_ready_function_that_raises_is_a_failing_check() -> None:
    def ready() -> dict[str, tuple[bool, str]]:
        raise OSError("disk gone")

    server = MetricsServer(_registry(), "127.0.0.1:0", ready=ready)
    server.start()
    try:
        r = httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
    finally:
        server.close()
    assert r.status_code == 503
    assert r.json()["failing"] == {"checks": "readiness raised OSError: disk gone"}


def test_close_frees_the_port_and_can_be_called_twice() -> None:
    server = MetricsServer(_registry(), "127.0.0.1:0")
    server.start()
    port = server.port
    server.close()
    server.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_an_ipv6_listen_address_is_served() -> None:
    needs(_has_ipv6_loopback(), "an IPv6 loopback address (::1)")
    server = MetricsServer(_registry(), "[::1]:0")
    server.start()
    try:
        assert httpx.get(f"http://[::1]:{server.port}/healthz", timeout=5).status_code == 200
    finally:
        server.close()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", ":9464", "host:port"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_build_info_names_the_component_and_version() -> None:
    registry = CollectorRegistry()
    register_build_info(registry, "cloud")
    python = ".".join(str(n) for n in sys.version_info[:3])
    labels = {"component": "cloud", "version": __version__, "python": python}
    assert registry.get_sample_value("cybernetic_build_info", labels) == 1.0


def test_a_condition_check_names_its_state_both_ways() -> None:
    state = {"up": True}
    check = condition(lambda: state["up"], "subscribed", "not subscribed on the cloud broker")
    ready = Readiness({"ingest": check})
    assert ready() == {"ingest": (True, "subscribed")}
    state["up"] = False
    assert ready() == {"ingest": (False, "not subscribed on the cloud broker")}


async def test_status_is_the_daemons_report_with_its_checks() -> None:
    readiness = Readiness({"ingest": condition(lambda: False, "up", "not subscribed")})
    server = MetricsServer(
        CollectorRegistry(), "127.0.0.1:0", ready=readiness, status=lambda: {"component": "t"}
    )
    server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            doc = (await client.get("/status")).json()
    finally:
        server.close()
    assert doc == {
        "component": "t",
        "ready": False,
        "checks": {"ingest": {"ok": False, "detail": "not subscribed"}},
    }
