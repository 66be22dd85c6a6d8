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


class EnrolmentSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pki_dir: str = ""
    """The fleet PKI made by ``cybernetic pki init``; empty: this cloud enrols no gateways."""
    cert_valid_s: Annotated[float, msgspec.Meta(gt=0)] = 30 * 86400.0


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
