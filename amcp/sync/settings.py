"""The ``[sync]`` configuration section, shared by the gateway and the cloud."""

from __future__ import annotations

from typing import Annotated

import msgspec

from amcp.sync.authority import DEFAULT_RULES, NamespaceRule, Owner
from amcp.wire import topics

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class SyncSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    topic_prefix: str = topics.DEFAULT_PREFIX
    """Frames travel on ``{prefix}/{gateway}/sync/up`` and ``…/sync/down``."""
    client_id: str = ""
    """MQTT client id; default ``{site}-sync``."""
    batch_bytes: Annotated[int, msgspec.Meta(ge=4096, le=512 * 1024)] = 96 * 1024
    """A delta's change set is at most this many bytes before compression."""
    compress_above: Annotated[int, msgspec.Meta(ge=0)] = 512
    """Deltas larger than this are zlib-compressed (when that makes them smaller)."""
    window: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    """Deltas in flight per peer (sent, not yet acknowledged)."""
    ack_timeout: Seconds = 10.0
    """A delta not acknowledged within this pauses the stream and probes the peer."""
    live_delay: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.05
    """Local changes are gathered this long before a delta goes out (bounded delay)."""
    anti_entropy: Seconds = 60.0
    """Period of the anti-entropy round: hellos, flushes, resumed streams."""
    gc_interval: Seconds = 3600.0
    """Period of tombstone collection and expiry of silent peers."""
    rules: list[NamespaceRule] = msgspec.field(default_factory=lambda: list(DEFAULT_RULES))
    default_owner: Owner = Owner.LOCAL
    """Owner of namespaces no rule names (``local``: not synced)."""
