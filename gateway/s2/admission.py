"""The S2 rate gate: what ingest and the command path call before doing any work.

It composes per-device, per-user and per-capability GCRA limiters, the gateway-wide budget
shared max-min fairly between devices, and the AIMD load factor. Readings go through
:meth:`RateGate.admit_devices` (a batch, one flag per reading); commands and intents go
through :meth:`RateGate.admit` (one typed decision naming the scope that refused).

Control work (fair-share windows, AIMD steps, pruning idle keys) runs from :meth:`tick`,
which the batch path calls itself when its interval is due, so no extra task is required.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence

import msgspec

from gateway.s2.adaptive import AdaptiveFactor
from gateway.s2.config import LimitsConfig, RateLimit
from gateway.s2.events import EventSink, LimitsChanged, discard
from gateway.s2.fairshare import FairShare
from gateway.s2.limiter import Budget, KeyedLimiter


class Scope(enum.StrEnum):
    DEVICE = "device"
    USER = "user"
    CAPABILITY = "capability"
    TOTAL = "total"


class Allowed(msgspec.Struct, frozen=True):
    """The request may proceed."""


class Denied(msgspec.Struct, frozen=True):
    """Refused: ``scope`` and ``key`` name the limit; ``retry_after_s`` says when to retry."""

    scope: Scope
    key: str
    retry_after_s: float


Decision = Allowed | Denied
ALLOWED = Allowed()


class RateGate:
    """Admission control for S2. Every method is synchronous and cheap; call it inline."""

    def __init__(
        self,
        config: LimitsConfig,
        clock: Callable[[], float],
        emit: EventSink = discard,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._emit = emit
        self._config = config
        n = config.max_keys
        self.limiters: dict[Scope, KeyedLimiter] = {
            Scope.DEVICE: KeyedLimiter(config.device, clock, config.device_overrides, n),
            Scope.USER: KeyedLimiter(config.user, clock, config.user_overrides, n),
            Scope.CAPABILITY: KeyedLimiter(
                config.capability, clock, config.capability_overrides, n
            ),
        }
        self.budget = Budget(config.total, clock)
        self.adaptive = AdaptiveFactor(config.adaptive, clock)
        self.fair = FairShare(max_devices=n)
        now = clock()
        self._window_start = now
        self._next_tick = now + config.fair_share_interval_s
        self._window_allowed = 0
        self._window_refused = 0

    # -- readings ------------------------------------------------------------------------

    def admit_devices(self, devices: Sequence[str]) -> list[bool]:
        """One flag per reading (by its device), in order; ``False`` readings are dropped.

        A reading passes its device's limit (capped by fair share) and then the global budget;
        when the budget is short the latest readings of the batch are the ones refused.
        """
        if self._clock() >= self._next_tick:
            self.tick()
        fair = self.fair
        demand = fair.demand
        if demand is not None and not fair.fits(len(devices)):
            fair.count(devices)  # the demand table may fill up: count with its bound
            demand = None
        flags = self.limiters[Scope.DEVICE].allow_batch(devices, demand)
        wanted = flags.count(True)
        granted = self.budget.take(wanted)
        self._window_allowed += wanted
        if granted < wanted:
            self._window_refused += wanted - granted
            excess = wanted - granted
            for i in range(len(flags) - 1, -1, -1):
                if flags[i]:
                    flags[i] = False
                    excess -= 1
                    if excess == 0:
                        break
        return flags

    # -- commands and intents ------------------------------------------------------------

    def admit(
        self,
        *,
        device: str | None = None,
        user: str | None = None,
        capability: str | None = None,
    ) -> Decision:
        """Check every named scope first and consume from all of them only if all conform.

        A command refused by its user's limit therefore does not spend its device's credit.
        """
        if self._clock() >= self._next_tick:
            self.tick()
        wanted = [
            (scope, key)
            for scope, key in (
                (Scope.DEVICE, device),
                (Scope.USER, user),
                (Scope.CAPABILITY, capability),
            )
            if key is not None
        ]
        for scope, key in wanted:
            limiter = self.limiters[scope]
            wait = limiter.retry_after(key)
            if wait > 0:
                limiter.refuse(key)
                return Denied(scope, key, wait)
        for scope, key in wanted:
            self.limiters[scope].allow(key)
        return ALLOWED

    # -- load and configuration ----------------------------------------------------------

    def observe_load(self, signal: str, value: float) -> None:
        """Report a load signal (``ingest_backlog``, ``outbox_depth``, ``cpu`` or configured)."""
        self.adaptive.observe(signal, value)

    def set_limit(self, scope: Scope, key: str | None, limit: RateLimit | None) -> None:
        """Change a limit at runtime (a config reload or a CRDT row from the cloud).

        ``key=None`` sets the scope's default (``limit`` required); otherwise ``limit=None``
        removes the key's override.
        """
        if scope is Scope.TOTAL:
            if limit is None:
                raise ValueError("the total budget cannot be removed, only changed")
            self.budget.set_limit(limit)
            return
        limiter = self.limiters[scope]
        if key is None:
            if limit is None:
                raise ValueError(f"the {scope} default cannot be removed, only changed")
            limiter.set_default(limit)
        else:
            limiter.set_override(key, limit)

    def apply(self, config: LimitsConfig) -> None:
        """Adopt a whole new limits section (hot reload); key state is kept."""
        self._config = config
        for scope, default, overrides in (
            (Scope.DEVICE, config.device, config.device_overrides),
            (Scope.USER, config.user, config.user_overrides),
            (Scope.CAPABILITY, config.capability, config.capability_overrides),
        ):
            limiter = self.limiters[scope]
            limiter.set_default(default)
            for key in set(limiter.overrides()) - set(overrides):
                limiter.set_override(key, None)
            for key, limit in overrides.items():
                limiter.set_override(key, limit)
        self.budget.set_limit(config.total)
        self.adaptive.reconfigure(config.adaptive)
        for limiter in self.limiters.values():
            limiter.set_capacity(config.max_keys)
        self.fair.max_devices = config.max_keys

    # -- control loop --------------------------------------------------------------------

    def tick_if_due(self) -> None:
        """Run :meth:`tick` if its interval passed (when no reading came to run it)."""
        if self._clock() >= self._next_tick:
            self.tick()

    def tick(self) -> None:
        """Close the fair-share window, step AIMD, prune idle keys.

        Emits :class:`LimitsChanged` when the factor moves or fair share engages or releases
        (not on every window's new level, which would flood the uplink).
        """
        now = self._clock()
        window = max(now - self._window_start, 1e-9)
        previous = self.adaptive.factor
        previous_cap = self.fair.cap
        factor = self.adaptive.step()
        self.budget.set_factor(factor)
        for limiter in self.limiters.values():
            limiter.set_factor(factor)
        cap = self.fair.update(window, self.budget.rate, self._window_allowed, self._window_refused)
        self.limiters[Scope.DEVICE].set_cap(cap)
        for limiter in self.limiters.values():
            limiter.prune()
            limiter.reset_window()
        self._window_start = now
        self._window_allowed = 0
        self._window_refused = 0
        self._next_tick = now + self._config.fair_share_interval_s
        if factor != previous or (cap is None) != (previous_cap is None):
            self._emit(
                LimitsChanged(
                    factor=factor,
                    previous_factor=previous,
                    pressure=list(self.adaptive.pressure),
                    fair_cap=cap,
                    ts_ms=int(self._wall() * 1000),
                )
            )
