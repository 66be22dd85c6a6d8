"""S2 configuration: rate limits, load-driven tightening, failure detection, stuck sensors.

Every Struct forbids unknown fields and constrains its numbers, so a typo or a negative rate
fails at start-up with its path. The same :class:`RateLimit` Struct is what a CRDT row carries
when the cloud tunes a limit at runtime (``RateGate.set_limit``).

Every table S2 keeps per device (limiter state, heartbeat histories, zombies, sensor streaks)
has a configured size bound (``max_*``), so S2's memory does not grow with the number of
distinct device names it is shown, and per-device events have a budget (``[s2.events]``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
Fraction = Annotated[float, Meta(gt=0, le=1)]
TableSize = Annotated[int, Meta(ge=1, le=10_000_000)]
"""Entries a per-device table may hold (each costs from about 100 bytes to about 2 KiB)."""
DEFAULT_MAX_TRACKED = 10_000


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
    max_keys: TableSize = DEFAULT_MAX_TRACKED
    """Keys per scope with limiter state at once, and devices whose demand fair share counts
    per window. Idle keys are pruned every window; when a flood of distinct keys fills the
    table anyway, the keys closest to being idle are dropped (they get a fresh burst) and
    fair share estimates the rest (``cybernetic_s2_state_evictions_total``,
    ``cybernetic_s2_state_untracked_total``)."""


class PhiConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Phi-accrual parameters (Hayashibara et al.; the defaults follow Akka's)."""

    threshold: Annotated[float, Meta(gt=0, le=1000)] = 8.0
    """Suspicion level at which a unit is declared a zombie (8 ≈ 1e-8 chance of a mistake)."""
    window: Annotated[int, Meta(ge=2, le=10_000)] = 100
    """Heartbeat intervals kept per unit (memory: 8 bytes each, plus a float object)."""
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
    min_intervals: Annotated[int, Meta(ge=1, le=10_000)] = 8
    """Real intervals needed before the seed estimate is dropped (a deviation estimated from
    two or three samples is too often far too small)."""
    min_std_ratio: Annotated[float, Meta(ge=0, lt=1)] = 0.05
    """Floor on the deviation relative to the mean interval: a 30 s reporter's timer jitters
    by more than a 1 s one's, and ``min_std_s`` alone would judge it on milliseconds."""
    max_units: TableSize = DEFAULT_MAX_TRACKED
    """Units with a heartbeat history at once. When full, a unit heard from only once is
    dropped to make room (oldest first); when every tracked unit has a learnt cadence, a new
    unit is not tracked until a slot frees (a zombie leaves the table when it is declared).
    Both are counted in ``cybernetic_s2_state_evictions_total`` /
    ``cybernetic_s2_state_untracked_total``."""
    max_declared_per_check: Annotated[int, Meta(ge=1, le=1_000_000)] = 2_000
    """Zombies one check declares at most (about 8 µs each, plus the reassignment hook): when
    a whole fleet falls silent at once, the rest are declared by the next checks, so no tick
    stalls the gateway for long."""
    max_zombies: TableSize = DEFAULT_MAX_TRACKED
    """Declared zombies remembered until they recover (about 150 bytes each); beyond it the
    oldest declared is forgotten (its recovery then emits nothing)."""


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
    max_devices: TableSize = DEFAULT_MAX_TRACKED
    """Devices whose streaks are kept; beyond it the least recently seen device is dropped
    (its open conditions with it, counted in ``cybernetic_s2_state_evictions_total``)."""

    def __post_init__(self) -> None:
        names = [r.name for r in self.relations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"relation names must be unique, repeated: {', '.join(duplicates)}")


class EventsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How many per-device events (zombies, stuck sensors, inconsistent metrics, and their
    recoveries) S2 sends one by one; the rest are counted in an ``s2.events.suppressed``
    summary. Two GCRA budgets: one for the whole gateway and one per device."""

    per_minute: Annotated[int, Meta(ge=1, le=100_000)] = 60
    """Sustained individual events per minute, all devices together."""
    burst: Annotated[int, Meta(ge=1, le=100_000)] = 20
    """Individual events allowed at once on top of the sustained rate."""
    per_device_per_minute: Annotated[int, Meta(ge=1, le=10_000)] = 6
    per_device_burst: Annotated[int, Meta(ge=1, le=10_000)] = 4
    """A flapping device (declared, recovered, declared...) gets this many at once."""
    summary_interval_s: Annotated[float, Meta(ge=1, le=3600)] = 10.0
    """At most one summary per interval; the first goes out at the next tick."""
    sample: Annotated[int, Meta(ge=0, le=100)] = 10
    """Sources named per event type in a summary (the first ones suppressed)."""


class S2Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[s2]`` section of the gateway configuration."""

    limits: LimitsConfig = LimitsConfig()
    phi: PhiConfig = PhiConfig()
    stuck: StuckConfig = StuckConfig()
    events: EventsConfig = EventsConfig()
    lease_ttl_s: PositiveFloat = 30.0
    lease_queue: Annotated[int, Meta(ge=0, le=10_000)] = 8
    """Commands queued behind a held lease per device; 0 means refuse at once."""
