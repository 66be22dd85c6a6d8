"""The gateway's configuration file (TOML). Documented in docs/configuration.md."""

from __future__ import annotations

from typing import Annotated

import msgspec

from amcp.runtime.settings import BrokerLink, LogSettings, MetricsSettings, Seconds
from amcp.sync import SyncSettings
from amcp.wire import topics
from firmware_bridge.settings import BridgeSettings
from gateway.outbox import OutboxSettings
from gateway.rules import RulesSettings
from gateway.s1 import S1Settings
from gateway.s2.config import S2Config
from wasm import PolicyConfig

Positive = Annotated[int, msgspec.Meta(gt=0)]
Identifier = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class GatewaySection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: Identifier
    state_dir: str = "/var/lib/cybernetic/gateway"
    zone: str = "default"
    twin_interval: Seconds = 5.0
    """How often each device's latest values are written to its reported twin."""


class IngestSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    topic: str = topics.DEVICE_TELEMETRY_FILTER
    max_payload_bytes: Annotated[int, msgspec.Meta(ge=64, le=1_048_576)] = 65_536
    max_fields: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 256
    devices: list[str] = msgspec.field(default_factory=list)
    """Allow-list of device ids; empty with ``auto_register`` accepts any device."""
    auto_register: bool = True
    max_devices: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    """With ``auto_register``, at most this many distinct devices are taken (since start);
    readings of any further device are refused as ``too_many_devices``."""
    batch_max: Positive = 500
    """Readings per outbox commit; keep it well under the broker's max_inflight_messages so
    the broker keeps sending while a commit runs."""
    batch_interval: Seconds = 0.01
    dead_letter_max_rows: Positive = 10_000


class UplinkSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    broker: BrokerLink = msgspec.field(default_factory=BrokerLink)
    topic_prefix: str = topics.DEFAULT_PREFIX
    batch_max: Positive = 500
    batch_interval: Seconds = 0.02
    window: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16
    """Batches in flight (sent, not yet acknowledged by the cloud)."""
    ack_timeout: Seconds = 15.0
    link_secret_file: str = ""
    """The link secret shared with the cloud (hex, 16+ bytes, mode 0600): every message on
    the link travels in an envelope signed with keys derived from it (docs/wire.md)."""
    cloud_id: str = "cloud"
    enrol_dir: str = ""
    """Where ``cybernetic gateway enrol`` left this gateway's keys, certificate and link
    secret; when set, the gateway renews the certificate and the link secret on schedule."""
    renew_link_every: Seconds = 86400.0
    renew_cert_before: Seconds = 7 * 86400.0
    renew_check_every: Seconds = 600.0
    clock_window: Seconds = 90.0
    """Envelopes from the cloud stamped further than this from our clock are refused."""
    heartbeat_interval: Annotated[float, msgspec.Meta(ge=0.05, le=3600)] = 5.0
    """Seconds between two signed heartbeats to the cloud's fleet table (gateway.heartbeat)."""

    def __post_init__(self) -> None:
        if not self.link_secret_file:
            raise ValueError("uplink.link_secret_file is required (envelopes are always signed)")


class GatewayConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    gateway: GatewaySection
    local_broker: BrokerLink = msgspec.field(default_factory=lambda: BrokerLink(username="gateway"))
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    outbox: OutboxSettings = msgspec.field(default_factory=OutboxSettings)
    uplink: UplinkSettings = msgspec.field(default_factory=UplinkSettings)
    s1: S1Settings = msgspec.field(default_factory=S1Settings)
    rules: RulesSettings = msgspec.field(default_factory=RulesSettings)
    sync: SyncSettings = msgspec.field(default_factory=SyncSettings)
    s2: S2Config = msgspec.field(default_factory=S2Config)
    policy: PolicyConfig | None = None
    """A WASM policy enforced at ingest (drop / flag / transform), docs/policy-language.md."""
    bridge: BridgeSettings = msgspec.field(default_factory=BridgeSettings)
    """OPC-UA and Modbus machines read as devices (docs/bridge.md); none by default."""
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
