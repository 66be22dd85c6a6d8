"""CRDT delta sync between gateways and the cloud over MQTT (docs/architecture.md, docs/sync.md).

- :class:`GatewaySync` / :class:`CloudSync`: ``run(ctx)`` for the daemons' supervision trees.
- :class:`SyncSettings`: the ``[sync]`` configuration section.
- :class:`SyncEngine`: the transport-independent state machine both of them drive.
- :class:`Authority`: which side may write which namespace (enforced on merge).
- :mod:`amcp.sync.frames`: the wire frames (carried in ``SyncFrame`` envelopes).
"""

from amcp.sync.authority import (
    DEFAULT_RULES,
    REFUSED_NAMESPACE,
    Authority,
    NamespaceRule,
    Owner,
    Refusal,
)
from amcp.sync.engine import SyncEngine
from amcp.sync.frames import Ack, Delta, FrameError, Hello
from amcp.sync.settings import SyncSettings
from amcp.sync.stats import Role, SyncStats
from amcp.sync.transport import CloudSync, GatewaySync

__all__ = [
    "DEFAULT_RULES",
    "REFUSED_NAMESPACE",
    "Ack",
    "Authority",
    "CloudSync",
    "Delta",
    "FrameError",
    "GatewaySync",
    "Hello",
    "NamespaceRule",
    "Owner",
    "Refusal",
    "Role",
    "SyncEngine",
    "SyncSettings",
    "SyncStats",
]
