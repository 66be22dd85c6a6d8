"""S2 configuration: defaults decode, bad values and typos are named with their path."""

from __future__ import annotations

import msgspec
import pytest

from amcp.runtime.config import ConfigError, from_dict
from gateway.s2.config import AdaptiveConfig, RateLimit, S2Config


def test_defaults_decode() -> None:
    config = from_dict({}, S2Config, environ={})
    assert config.limits.device == RateLimit(rate=1_000.0, burst=100_000)
    assert config.phi.threshold == 8.0
    assert set(config.limits.adaptive.signals) == {"ingest_backlog", "outbox_depth", "cpu"}


def test_every_bad_field_is_named() -> None:
    data = {
        "limits": {
            "device": {"rate": -1, "burst": 0},
            "user": {"rate": 1, "brust": 3},
            "adaptive": {"signals": {"cpu": {"high": 0.5, "low": 0.9}}},
        },
        "phi": {"threshold": "high"},
        "lease_ttl_s": 0,
    }
    with pytest.raises(ConfigError) as info:
        from_dict(data, S2Config, environ={})
    text = "\n".join(info.value.errors)
    assert "$.limits.device.rate" in text
    assert "$.limits.device.burst" in text
    assert "brust" in text
    assert "$.phi.threshold" in text
    assert "$.lease_ttl_s" in text


def test_watermark_order_is_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="low"):
        msgspec.convert({"signals": {"cpu": {"high": 0.5, "low": 0.9}}}, AdaptiveConfig)


def test_limit_rows_round_trip_as_crdt_values() -> None:
    """A limit travels as a CRDT row value: msgpack of the same Struct."""
    row = msgspec.msgpack.encode(RateLimit(rate=5, burst=10))
    assert msgspec.msgpack.decode(row, type=RateLimit) == RateLimit(rate=5, burst=10)
    with pytest.raises(msgspec.ValidationError, match="rate"):
        msgspec.msgpack.decode(msgspec.msgpack.encode({"rate": 0}), type=RateLimit)
