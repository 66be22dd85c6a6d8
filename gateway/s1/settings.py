"""The ``[s1]`` section of the gateway's configuration: capabilities, units, quotas, limits.

Every Struct forbids unknown fields, so a typo fails at start-up with its path
(``$.s1.units[0].quotas.max_rate``). Documented in docs/s1.md.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from amcp.runtime.settings import Seconds
from amcp.wire import topics

Positive = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
CapabilityName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
DeviceId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
UnitPath = Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63}(/|$))*$")]
"""``""`` is the root unit; ``line-a/pumps`` is the unit ``pumps`` inside ``line-a``."""


class QuotaSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What one unit may use. The memory quota counts the unit's own buffered state (bytes of
    device replies waiting to be forwarded), not the process RSS, which no unit owns alone."""

    max_children: Annotated[int, msgspec.Meta(ge=0)] = 16
    max_rate: Annotated[float, msgspec.Meta(gt=0)] = 50.0
    """Intents admitted per second, sustained (token bucket)."""
    burst: Positive = 20
    max_buffer_bytes: Positive = 1 << 20


class BreakerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Spawn-storm breaker: more than ``max_spawns`` spawn attempts within ``window`` seconds
    opens it; every spawn is then refused until ``cooldown`` seconds have passed."""

    max_spawns: Positive = 20
    window: Seconds = 10.0
    cooldown: Seconds = 30.0


class UnitConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    path: UnitPath
    quotas: QuotaSettings = msgspec.field(default_factory=QuotaSettings)


class CapabilityConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A capability this gateway offers, carried out by one device over MQTT."""

    name: CapabilityName
    device: DeviceId
    action: str = ""
    """The action sent to the device; defaults to the capability's name."""
    description: str = ""
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    """JSON Schema the intent's args must satisfy (checked before the device is asked)."""
    output_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    zone: str = ""
    cost: NonNegative = 0.0
    unit: UnitPath = ""
    timeout: Seconds | None = None
    """Whole-intent limit for this capability; ``intent_timeout`` when unset."""
    standby: list[DeviceId] = msgspec.field(default_factory=list)
    """Devices that can carry out the same action, in order of preference: when S2 declares
    the carrying device a zombie, the capability moves to the first standby that is not one
    (docs/s1.md, "Standby devices")."""


class S1Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    topic_prefix: str = topics.DEFAULT_PREFIX
    """Link topics: ``{prefix}/{gateway}/intents``, ``…/intents/updates``, ``…/capabilities``."""
    announce_interval: Seconds = 60.0
    """The retained announcement is re-sent this often (and at once when capabilities change)."""
    command_timeout: Seconds = 10.0
    """A device that sends nothing for this long while a command is open has timed out."""
    intent_timeout: Seconds = 60.0
    """Default limit for a whole intent when neither the intent nor its capability sets one."""
    max_intents: Positive = 64
    """Intents running at once; more are failed with code ``refused``."""
    max_depth: Annotated[int, msgspec.Meta(ge=0, le=32)] = 4
    """Deepest unit below the root (the root is depth 0)."""
    root_quotas: QuotaSettings = msgspec.field(default_factory=QuotaSettings)
    breaker: BreakerSettings = msgspec.field(default_factory=BreakerSettings)
    units: list[UnitConfig] = msgspec.field(default_factory=list)
    capabilities: list[CapabilityConfig] = msgspec.field(default_factory=list)
    tree_file: str = "units.json"
    """Where (relative to the gateway's state_dir) the unit tree is written for
    ``cybernetic units``."""
    tree_interval: Seconds = 2.0
