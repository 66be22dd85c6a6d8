"""The cloud process's configuration file (TOML). Documented in docs/configuration.md."""

from __future__ import annotations

from typing import Annotated

import msgspec

from amcp.runtime.settings import BrokerLink, LogSettings, MetricsSettings
from amcp.sync import SyncSettings
from amcp.wire import topics
from cloud.s1 import CloudS1Settings


class CloudSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str = "cloud"
    state_dir: str = "/var/lib/cybernetic/cloud"


class CloudIngestSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    topic_prefix: str = topics.DEFAULT_PREFIX
    session: str = "cloud-ingest"
    """MQTT client id of the persistent session: batches wait in the broker while we are down."""


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


class CloudConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cloud: CloudSection = msgspec.field(default_factory=CloudSection)
    broker: BrokerLink = msgspec.field(default_factory=lambda: BrokerLink(username="cloud"))
    ingest: CloudIngestSettings = msgspec.field(default_factory=CloudIngestSettings)
    links: LinkSettings = msgspec.field(default_factory=LinkSettings)
    enrolment: EnrolmentSettings = msgspec.field(default_factory=EnrolmentSettings)
    s1: CloudS1Settings = msgspec.field(default_factory=CloudS1Settings)
    sync: SyncSettings = msgspec.field(default_factory=SyncSettings)
    metrics: MetricsSettings = msgspec.field(
        default_factory=lambda: MetricsSettings(listen="127.0.0.1:9465")
    )
    log: LogSettings = msgspec.field(default_factory=LogSettings)
