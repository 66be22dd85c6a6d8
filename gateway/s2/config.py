"""S2 configuration: rate limits, load-driven tightening, failure detection, stuck sensors.

Every Struct forbids unknown fields and constrains its numbers, so a typo or a negative rate
fails at start-up with its path. The same :class:`RateLimit` Struct is what a CRDT row carries
when the cloud tunes a limit at runtime (``RateGate.set_limit``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
Fraction = Annotated[float, Meta(gt=0, le=1)]


class RateLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A sustained ``rate`` (events per second) with room for ``burst`` events at once."""

    rate: PositiveFloat
    burst: Annotated[int, Meta(ge=1)] = 1


class Watermark(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A load signal is *high* at or above ``high`` and *low* at or below ``low``.

    The gap between the two is hysteresis: between them the limits hold still, so a signal
    hovering around one threshold does not make the limits oscillate (S2's whole job).
    """

    high: NonNegativeFloat
    low: NonNegativeFloat

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")


def _default_signals() -> dict[str, Watermark]:
    return {
        "ingest_backlog": Watermark(high=5_000, low=1_000),
        "outbox_depth": Watermark(high=200_000, low=50_000),
        "cpu": Watermark(high=0.85, low=0.6),
    }


class AdaptiveConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """AIMD on a factor in ``[min_factor, 1]`` that scales every configured rate."""

    decrease: Annotated[float, Meta(gt=0, lt=1)] = 0.5
    """Multiply the factor by this when any signal is high."""
    increase: Fraction = 0.1
    """Add this to the factor when every signal is low."""
    min_factor: Fraction = 0.05
    interval_s: PositiveFloat = 1.0
    """At most one step per interval: the gateway needs time to show the effect of a step."""
    signals: dict[str, Watermark] = msgspec.field(default_factory=_default_signals)


class LimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Default limits per scope, per-key overrides, the global budget and adaptation."""

    device: RateLimit = RateLimit(rate=1_000.0, burst=100_000)
    """Generous by default: a device's backlog after an outage drains through the burst, while
    a device flooding for longer than that is held to its rate (tighten per device below)."""
    user: RateLimit = RateLimit(rate=10.0, burst=20)
    capability: RateLimit = RateLimit(rate=50.0, burst=100)
    total: RateLimit = RateLimit(rate=50_000.0, burst=500_000)
    """The gateway-wide budget for readings, shared max-min fairly between devices."""
    device_overrides: dict[str, RateLimit] = {}
    user_overrides: dict[str, RateLimit] = {}
    capability_overrides: dict[str, RateLimit] = {}
    fair_share_interval_s: PositiveFloat = 1.0
    adaptive: AdaptiveConfig = AdaptiveConfig()


class PhiConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Phi-accrual parameters (Hayashibara et al.; the defaults follow Akka's)."""

    threshold: PositiveFloat = 8.0
    """Suspicion level at which a unit is declared a zombie (8 ≈ 1e-8 chance of a mistake)."""
    window: Annotated[int, Meta(ge=2, le=10_000)] = 100
    min_std_s: PositiveFloat = 0.1
    """Floor on the interval deviation so a perfectly regular sender is not judged on noise."""
    acceptable_pause_s: NonNegativeFloat = 3.0
    """Extra silence tolerated before suspicion grows (Wi-Fi retries, broker hiccups, GC).

    Akka's default. With a 1 s cadence and the defaults, a silent unit is declared after
    about 1 + 3 + 5.22 * 0.1 ≈ 4.5 s of silence (see ``ZombieDetector.bound``)."""
    first_interval_s: PositiveFloat = 30.0
    """Assumed cadence of a new unit (when its first heartbeat names none), used only until
    ``min_intervals`` real intervals are known: generous, so a slow sensor is not declared
    dead before its cadence has been learnt."""
    min_intervals: Annotated[int, Meta(ge=1)] = 8
    """Real intervals needed before the seed estimate is dropped (a deviation estimated from
    two or three samples is too often far too small)."""
    min_std_ratio: Annotated[float, Meta(ge=0, lt=1)] = 0.05
    """Floor on the deviation relative to the mean interval: a 30 s reporter's timer jitters
    by more than a 1 s one's, and ``min_std_s`` alone would judge it on milliseconds."""


class Relation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``left op right * scale + offset`` must hold (within ``tolerance``) in every reading.

    ``right`` names another metric or is a constant; e.g. power <= voltage * current * 1.05,
    or humidity <= 100.
    """

    name: str
    left: str
    op: Literal["<=", "<", ">=", ">", "=="]
    right: str | float
    scale: float = 1.0
    offset: float = 0.0
    tolerance: NonNegativeFloat = 0.0
    consecutive: Annotated[int, Meta(ge=1)] = 3
    """Violations in a row before flagging: one glitchy sample is not an inconsistency."""


class StuckConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A metric is stuck when unchanged for ``min_samples`` readings *and* ``min_duration_s``."""

    min_samples: Annotated[int, Meta(ge=2)] = 30
    min_duration_s: PositiveFloat = 300.0
    epsilon: NonNegativeFloat = 0.0
    """Changes no larger than this count as unchanged (a frozen ADC may dither in its LSB)."""
    ignore: list[str] = []
    """Metrics that are legitimately constant (set-points, firmware versions)."""
    relations: list[Relation] = []


class S2Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[s2]`` section of the gateway configuration."""

    limits: LimitsConfig = LimitsConfig()
    phi: PhiConfig = PhiConfig()
    stuck: StuckConfig = StuckConfig()
    lease_ttl_s: PositiveFloat = 30.0
    lease_queue: Annotated[int, Meta(ge=0)] = 8
    """Commands queued behind a held lease per device; 0 means refuse at once."""
