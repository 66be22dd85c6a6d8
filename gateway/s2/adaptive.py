"""Load-driven tightening of every limit: AIMD on one factor.

Load signals (ingest backlog, outbox depth, CPU, or any other the wiring reports) each have a
high and a low watermark. Once per interval:

- any signal at or above its high mark → ``factor *= decrease`` (multiplicative decrease,
  floored at ``min_factor``): a gateway being overrun must shed load fast;
- every signal at or below its low mark → ``factor += increase`` (additive increase, capped
  at 1): recovery is gradual so the load does not swing straight back;
- otherwise (between the marks) → hold. This hysteresis is what keeps the loop from
  oscillating.

A signal not reported for ``3 * interval`` is treated as low (a stalled reporter must not pin
the gateway at its tightest limits forever); the factor multiplies every configured rate.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.s2.config import AdaptiveConfig


class UnknownSignalError(KeyError):
    """A load signal with no watermarks in the configuration."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown load signal {name!r} (configured: {', '.join(known)})")
        self.name = name


class AdaptiveFactor:
    """The AIMD controller; :meth:`step` returns the factor to apply to every limit."""

    def __init__(self, config: AdaptiveConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._values: dict[str, tuple[float, float]] = {}
        self._last_step = clock()
        self.factor = 1.0
        self.pressure: list[str] = []
        """Signals that were high at the last step (for events and metrics)."""

    @property
    def config(self) -> AdaptiveConfig:
        return self._config

    def reconfigure(self, config: AdaptiveConfig) -> None:
        self._config = config
        self.factor = min(1.0, max(self.factor, config.min_factor))

    def observe(self, signal: str, value: float) -> None:
        """Record the latest value of a load signal (cheap; call as often as convenient)."""
        if signal not in self._config.signals:
            raise UnknownSignalError(signal, sorted(self._config.signals))
        self._values[signal] = (value, self._clock())

    def values(self) -> dict[str, float]:
        return {name: value for name, (value, _) in self._values.items()}

    def step(self) -> float:
        """Apply at most one AIMD step if an interval has passed; returns the factor."""
        now = self._clock()
        cfg = self._config
        if now - self._last_step < cfg.interval_s:
            return self.factor
        self._last_step = now
        stale = 3 * cfg.interval_s
        high: list[str] = []
        all_low = True
        for name, (value, at) in self._values.items():
            if now - at > stale:
                continue
            mark = cfg.signals[name]
            if value >= mark.high:
                high.append(name)
            if value > mark.low:
                all_low = False
        self.pressure = high
        if high:
            self.factor = max(cfg.min_factor, self.factor * cfg.decrease)
        elif all_low:
            self.factor = min(1.0, self.factor + cfg.increase)
        return self.factor
