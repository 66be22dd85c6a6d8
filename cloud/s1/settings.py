"""The ``[s1]`` section of the cloud's configuration (documented in docs/s1.md)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from amcp.wire import topics

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class CloudS1Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    topic_prefix: str = topics.DEFAULT_PREFIX
    client_id: str = "cloud-s1"
    """MQTT client id of the router's connection (a CLI run uses its own, random one)."""
    default_timeout: Seconds = 60.0
    """An intent's limit when the caller gives none; the gateway enforces it."""
    grace: Seconds = 5.0
    """Extra wait past the limit for the gateway's own ``failed`` answer before the router
    gives up on a silent gateway."""
    discovery_wait: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """How long ``send`` waits for an unknown capability to be announced before failing."""
