"""The gateway's metrics: one prefix, help texts that say what is counted, build info, the
latency histograms, readiness checks, all served over real HTTP and all in docs/operations.md."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from amcp import __version__
from amcp.runtime.metrics import MetricsServer
from amcp.wire.messages import IntentUpdate
from amcp.wire.telemetry import Reading
from gateway.metrics import (
    COMMIT_BUCKETS,
    INTENT_BUCKETS,
    ROUND_TRIP_BUCKETS,
    GatewayMetrics,
    gateway_readiness,
)
from gateway.outbox import OutboxStats

DOCS = Path(__file__).parents[2] / "docs" / "operations.md"


class _Counts:
    allowed = 5
    flagged = 1
    denied = 2
    transformed = 0
    faults = 0


def _metrics() -> tuple[GatewayMetrics, dict[str, object]]:
    """Every collector the gateway registers on GatewayMetrics, fed with live state."""
    metrics = GatewayMetrics()
    state: dict[str, object] = {"stats": OutboxStats(rows=3, bytes=300), "ingest": True}
    metrics.watch(
        lambda: state["stats"],  # type: ignore[arg-type,return-value]
        lambda: (True, 0.25),
        lambda: bool(state["ingest"]),
    )
    metrics.watch_policy(_Counts())
    return metrics, state


def _families(registry: CollectorRegistry) -> dict[str, tuple[str, str]]:
    """Exposed family name → (type, help)."""
    out = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = (family.type, family.documentation)
    return out


def test_every_gateway_metric_has_the_one_prefix_and_a_help_text() -> None:
    metrics, _ = _metrics()
    families = _families(metrics.registry)
    assert len(families) > 20
    for name, (_, text) in families.items():
        assert name.startswith("cybernetic_"), name
        assert len(text) > 15, name


def test_build_info_names_the_gateway_and_its_version() -> None:
    metrics = GatewayMetrics(version="9.8.7")
    python = metrics.build_info.collect()[0].samples[0].labels["python"]
    labels = {"component": "gateway", "version": "9.8.7", "python": python}
    assert metrics.registry.get_sample_value("cybernetic_build_info", labels) == 1.0
    default = GatewayMetrics()
    (sample,) = default.build_info.collect()[0].samples
    assert sample.labels["version"] == __version__


def test_the_acked_counter_says_it_counts_rows_of_both_kinds() -> None:
    metrics, _ = _metrics()
    families = _families(metrics.registry)
    assert "cybernetic_uplink_acked_readings_total" not in families
    kind, text = families["cybernetic_uplink_acked_rows_total"]
    assert kind == "counter"
    assert "readings and gateway events" in text
    metrics.acked.inc(7)
    assert metrics.registry.get_sample_value("cybernetic_uplink_acked_rows_total") == 7


def _reading(seq: int, received_ms: int) -> Reading:
    return Reading("dev", "b1", seq, received_ms, {"v": seq}, received_ms)


def test_commit_latency_is_observed_once_per_commit_from_its_oldest_reading() -> None:
    metrics = GatewayMetrics()
    now = int(time.time() * 1000)
    metrics.observe_commit([_reading(1, now - 40), _reading(2, now - 5), _reading(3, now)], now)
    metrics.observe_commit([_reading(4, now - 2)], now)
    metrics.observe_commit([], now)  # a commit of refusals only: nothing to time
    metrics.observe_commit([_reading(5, now + 3)], now)  # a clock step back is not negative
    get = metrics.registry.get_sample_value
    name = "cybernetic_ingest_commit_latency_seconds"
    assert get(f"{name}_count") == 3
    assert get(f"{name}_sum") == pytest.approx(0.042)
    assert get(f"{name}_bucket", {"le": "0.001"}) == 1
    assert get(f"{name}_bucket", {"le": "0.0025"}) == 2
    assert get(f"{name}_bucket", {"le": "0.05"}) == 3


def test_round_trip_is_a_histogram_of_seconds() -> None:
    metrics = GatewayMetrics()
    for s in (0.004, 0.02, 0.02, 45.0):
        metrics.round_trip_seconds.observe(s)
    get = metrics.registry.get_sample_value
    name = "cybernetic_uplink_round_trip_seconds"
    assert get(f"{name}_count") == 4
    assert get(f"{name}_bucket", {"le": "0.025"}) == 3
    assert get(f"{name}_bucket", {"le": "30.0"}) == 3
    assert get(f"{name}_bucket", {"le": "+Inf"}) == 4


def test_intent_duration_is_labelled_by_its_outcome() -> None:
    metrics = GatewayMetrics()
    metrics.observe_intent(0.3, IntentUpdate("i1", "done", data={"ok": True}))
    metrics.observe_intent(5.0, IntentUpdate("i2", "failed", error="slow", code="timeout"))
    metrics.observe_intent(0.01, IntentUpdate("i3", "failed", error="?"))
    get = metrics.registry.get_sample_value
    name = "cybernetic_intent_duration_seconds"
    assert get(f"{name}_count", {"outcome": "done"}) == 1
    assert get(f"{name}_sum", {"outcome": "timeout"}) == 5.0
    assert get(f"{name}_count", {"outcome": "error"}) == 1


def test_bucket_bounds_rise() -> None:
    for buckets in (COMMIT_BUCKETS, ROUND_TRIP_BUCKETS, INTENT_BUCKETS):
        assert list(buckets) == sorted(set(buckets))


@pytest.fixture
def served() -> Iterator[tuple[str, dict[str, object], GatewayMetrics]]:
    metrics, state = _metrics()
    ready = gateway_readiness(
        lambda: state["stats"],  # type: ignore[arg-type,return-value]
        lambda: bool(state["ingest"]),
    )
    server = MetricsServer(metrics.registry, "127.0.0.1:0", ready=ready)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", state, metrics
    finally:
        server.close()


def test_the_gateway_metrics_are_scraped_over_http(
    served: tuple[str, dict[str, object], GatewayMetrics],
) -> None:
    url, _, metrics = served
    metrics.round_trip_seconds.observe(0.03)
    metrics.stored.inc(10)
    body = httpx.get(f"{url}/metrics", timeout=5).text
    assert "cybernetic_ingest_stored_readings_total 10.0" in body
    assert 'cybernetic_uplink_round_trip_seconds_bucket{le="0.05"} 1.0' in body
    assert "cybernetic_outbox_rows 3.0" in body
    assert 'cybernetic_build_info{component="gateway"' in body
    assert 'cybernetic_policy_decisions_total{decision="denied"} 2.0' in body
    assert re.search(r"^s2_", body, re.MULTILINE) is None


def test_readiness_follows_ingest_and_the_outbox_disk(
    served: tuple[str, dict[str, object], GatewayMetrics],
) -> None:
    url, state, _ = served
    r = httpx.get(f"{url}/readyz", timeout=5)
    assert r.status_code == 200
    assert r.json()["checks"] == {
        "ingest": "subscribed on the local broker",
        "outbox": "3 rows waiting",
    }
    state["ingest"] = False
    state["stats"] = OutboxStats(rows=9, full=True)
    r = httpx.get(f"{url}/readyz", timeout=5)
    assert r.status_code == 503
    assert r.json() == {
        "status": "not ready",
        "failing": {
            "ingest": "not subscribed on the local broker",
            "outbox": "disk full: ingest paused, the broker keeps the readings",
        },
    }
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # not ready, still live


def test_docs_list_every_gateway_metric() -> None:
    metrics, _ = _metrics()
    text = DOCS.read_text()
    missing = [name for name in _families(metrics.registry) if f"`{name}" not in text]
    assert missing == []
