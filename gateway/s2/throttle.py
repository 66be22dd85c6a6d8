"""The event budget: per-device S2 events are rate limited, the rest summarised.

When a broker outage silences 40,000 devices, 40,000 ``s2.zombie`` events would flood the
outbox and the uplink and tell the operator nothing one aggregated event could not. The
detectors therefore offer each per-device event (zombie declared or recovered, sensor stuck
or recovered, metrics inconsistent or consistent) to an :class:`EventThrottle`, which sends it
when two GCRA budgets conform:

- the gateway's: ``burst`` events at once, ``per_minute`` sustained;
- the device's: ``per_device_burst`` at once, ``per_device_per_minute`` sustained (a flapping
  device cannot use the whole gateway's budget).

An event refused is counted by type, with the first few sources named, and :meth:`tick`
sends one :class:`~gateway.s2.events.EventsSuppressed` summary at most every
``summary_interval_s`` (with the current zombie and stuck totals). A detector remembers
whether a condition's beginning was sent; its end is sent one by one only in that case
(otherwise it is counted too), so the cloud never sees an end without a beginning.

State: one float for the gateway and one per device that was *sent* an event recently; a
device's entry is pruned (each :meth:`tick`) once its budget is full again, at most
``per_device_burst / per_device_per_minute`` minutes after its last event, and only events the
gateway's budget let through create one: the table holds at most about
``burst + per_minute * per_device_burst / per_device_per_minute`` entries.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.s2.config import EventsConfig
from gateway.s2.events import EventSink, EventsSuppressed, S2Event, discard

_SLACK = 1e-9


def event_type(event: S2Event) -> str:
    """The event's tag (``"s2.zombie"``), the name it has in the outbox."""
    return str(event.__struct_config__.tag)


class EventThrottle:
    """Sends per-device events within budget and counts the rest; ``config=None`` sends all."""

    def __init__(
        self,
        config: EventsConfig | None,
        clock: Callable[[], float],
        emit: EventSink = discard,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._clock = clock
        self._emit = emit
        self._wall = wall
        self._tat = 0.0
        self._source_tats: dict[str, float] = {}
        self._pending: dict[str, int] = {}
        self._sample: dict[str, list[str]] = {}
        self._since_ms = int(wall() * 1000)
        self._untracked = 0
        self._next_summary = -float("inf")
        self.sent = 0
        self.suppressed: dict[str, int] = {}
        """Events not sent one by one since start, by type (for the metrics)."""
        self.summaries = 0

    @property
    def config(self) -> EventsConfig | None:
        return self._config

    def offer(self, event: S2Event, source: str) -> bool:
        """Send ``event`` (about ``source``) if both budgets conform; else count it."""
        config = self._config
        if config is None:
            self._emit(event)
            self.sent += 1
            return True
        now = self._clock()
        interval = 60.0 / config.per_minute
        tat = max(self._tat, now)
        if tat - now > (config.burst - 1) * interval + _SLACK:
            self.suppress(event_type(event), source)
            return False
        source_interval = 60.0 / config.per_device_per_minute
        source_tat = max(self._source_tats.get(source, now), now)
        if source_tat - now > (config.per_device_burst - 1) * source_interval + _SLACK:
            self.suppress(event_type(event), source)
            return False
        self._tat = tat + interval
        self._source_tats[source] = source_tat + source_interval
        self._emit(event)
        self.sent += 1
        return True

    def suppress(self, kind: str, source: str) -> None:
        """Count an event of type ``kind`` that is not sent one by one."""
        self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
        self._pending[kind] = self._pending.get(kind, 0) + 1
        if self._config is not None and self._config.sample:
            names = self._sample.setdefault(kind, [])
            if len(names) < self._config.sample:
                names.append(source)

    def pending(self) -> dict[str, int]:
        """Events counted since the last summary, by type."""
        return dict(self._pending)

    def tick(
        self, *, zombies: int = 0, sensors_stuck: int = 0, untracked: int = 0
    ) -> EventsSuppressed | None:
        """Prune idle per-device budgets; send a summary when one is due and has news.

        ``untracked`` (units the detectors could not track since the last call) is
        accumulated until the next summary; news is anything suppressed or untracked.
        """
        now = self._clock()
        tats = self._source_tats
        if tats:
            for source in [s for s, t in tats.items() if t <= now]:
                del tats[source]
        self._untracked += untracked
        if now < self._next_summary or not (self._pending or self._untracked):
            return None
        ts_ms = int(self._wall() * 1000)
        summary = EventsSuppressed(
            suppressed=self._pending,
            sample=self._sample,
            zombies=zombies,
            sensors_stuck=sensors_stuck,
            since_ms=self._since_ms,
            ts_ms=ts_ms,
            untracked=self._untracked,
        )
        self._pending = {}
        self._sample = {}
        self._untracked = 0
        self._since_ms = ts_ms
        interval = self._config.summary_interval_s if self._config is not None else 0.0
        self._next_summary = now + interval
        self.summaries += 1
        self._emit(summary)
        return summary

    def tracked(self) -> int:
        """Per-device budgets held now."""
        return len(self._source_tats)
