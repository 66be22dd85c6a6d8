"""The cloud process's configuration file (TOML). Documented in docs/configuration.md."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from amcp.runtime.settings import BrokerLink, LogSettings, MetricsSettings
from amcp.sync import SyncSettings
from amcp.wire import topics
from cloud.llm.settings import LlmSettings
from cloud.s1 import CloudS1Settings
from cloud.storage.settings import StorageSettings


class CloudSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str = "cloud"
    state_dir: str = "/var/lib/cybernetic/cloud"
    role: Literal["all", "ingest"] = "all"
    """``all``: every cloud service; ``ingest``: only the reading store and cloud ingest (an
    extra worker sharing the gateway uplinks, see docs/scale.md)."""


class CloudIngestSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    topic_prefix: str = topics.DEFAULT_PREFIX
    session: str = "cloud-ingest"
    """MQTT client id of the persistent session: batches wait in the broker while we are down.
    Each cloud worker needs its own."""
    shared_group: str = ""
    """Non-empty: subscribe through the MQTT shared subscription ``$share/<group>/...``, so
    several cloud workers split the gateway uplinks between them (docs/scale.md)."""

    def __post_init__(self) -> None:
        if any(c in self.shared_group for c in "/+#"):
            raise ValueError("ingest.shared_group must not contain '/', '+' or '#'")


class LinkSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    secrets_dir: str = "/etc/cybernetic/links"
    """One file per gateway, named by its id, holding that link's secret (hex, mode 0600)."""
    clock_window: Annotated[float, msgspec.Meta(gt=0)] = 90.0


class CrlSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[enrolment.crl]``: the fleet CRL re-signed on schedule (cloud.crl, docs/trust.md)."""

    check_every_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """How often the CRL and the root certificate are looked at (also once at start)."""
    valid_s: Annotated[float, msgspec.Meta(gt=0)] = 30 * 86400.0
    """How long each re-signed CRL is valid (its next update)."""
    renew_before_s: Annotated[float, msgspec.Meta(gt=0)] = 10 * 86400.0
    """Re-sign when less than this is left before the next update (a third of ``valid_s``)."""
    warn_before_s: Annotated[float, msgspec.Meta(ge=0)] = 7 * 86400.0
    """Log a warning, once a day, while the CRL's next update is closer than this."""
    ca_warn_before_s: Annotated[float, msgspec.Meta(ge=0)] = 90 * 86400.0
    """Log a warning, once a day, while the root certificate expires in less than this."""
    broker_pid_file: str = ""
    """Send SIGHUP to the pid in this file after re-signing, so the broker reloads the CRL;
    empty: the broker is reloaded by the host (docs/trust.md, "CRL renewal")."""

    def __post_init__(self) -> None:
        if self.renew_before_s >= self.valid_s:
            msg = "renew_before_s must be less than valid_s (else every check re-signs)"
            raise ValueError(msg)


class EnrolmentSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pki_dir: str = ""
    """The fleet PKI made by ``cybernetic pki init``; empty: this cloud enrols no gateways."""
    cert_valid_s: Annotated[float, msgspec.Meta(gt=0)] = 30 * 86400.0
    crl: CrlSettings = msgspec.field(default_factory=CrlSettings)


class FleetSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[fleet]``: the fleet table of gateway heartbeats (cloud.fleet, docs/operations.md)."""

    late_phi: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 3.0
    """Phi-accrual suspicion at which a gateway is marked late (3: a one in 1,000 chance that
    a live gateway's heartbeat is this late; about one missed heartbeat)."""
    lost_phi: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 8.0
    """Suspicion at which a gateway is marked lost (also needs ``min_lost_s`` of silence)."""
    min_lost_s: Annotated[float, msgspec.Meta(ge=0)] = 15.0
    """A gateway is never marked lost before this much silence, whatever phi says: with a
    regular 5 s cadence phi alone reaches 8 after about 8 s (one heartbeat lost on a WAN link
    and a late next one); the floor makes lost mean about three missed heartbeats."""
    check_interval: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """How often states are re-judged: a state changes at most this long after its bound."""
    max_gateways: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    """Gateways the table holds; heartbeats of more are counted (untracked), not kept."""
    metrics_max_gateways: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 100
    """Gateways that get their own ``cybernetic_fleet_last_seen_age_seconds{gateway}`` series
    (the first heard from; 0: none), so a large fleet cannot explode the label set."""
    session: str = "cloud-fleet"
    """MQTT client id of the fleet table's session (clean: old heartbeats are worthless)."""

    def __post_init__(self) -> None:
        if self.late_phi >= self.lost_phi:
            raise ValueError("fleet.late_phi must be below fleet.lost_phi")


class CloudConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cloud: CloudSection = msgspec.field(default_factory=CloudSection)
    broker: BrokerLink = msgspec.field(default_factory=lambda: BrokerLink(username="cloud"))
    ingest: CloudIngestSettings = msgspec.field(default_factory=CloudIngestSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    links: LinkSettings = msgspec.field(default_factory=LinkSettings)
    enrolment: EnrolmentSettings = msgspec.field(default_factory=EnrolmentSettings)
    s1: CloudS1Settings = msgspec.field(default_factory=CloudS1Settings)
    sync: SyncSettings = msgspec.field(default_factory=SyncSettings)
    fleet: FleetSettings = msgspec.field(default_factory=FleetSettings)
    llm: LlmSettings = msgspec.field(default_factory=LlmSettings)
    """The LLM engine's chain, keys and budgets (cloud.llm, docs/llm.md)."""
    metrics: MetricsSettings = msgspec.field(
        default_factory=lambda: MetricsSettings(listen="127.0.0.1:9465")
    )
    log: LogSettings = msgspec.field(default_factory=LogSettings)
