"""The fleet CRL kept fresh: re-signed on schedule, with expiry metrics and early warnings.

Mosquitto checks every gateway's certificate against ``<pki>/ca/crl.pem``, and OpenSSL refuses
*every* client once that CRL's next update is past, revoked or not. So the cloud daemon, when it
holds the fleet PKI (``[enrolment] pki_dir``), runs :class:`CrlRenewer` as a supervisor child:
at start and every ``check_every_s`` it reads the CRL on disk and, when less than
``renew_before_s`` of it is left (or it is missing, unreadable or not signed by the root),
re-signs it from the register of issued certificates, keeping every serial the old one listed,
and replaces the file atomically. Then it sends the broker SIGHUP when ``broker_pid_file``
names it; otherwise the host reloads the broker (docs/trust.md, "CRL renewal").

It also reports ``cybernetic_pki_crl_next_update_seconds`` and
``cybernetic_pki_ca_expiry_seconds`` (computed at each scrape from the dates last read) and
logs a warning once a day while either is within its margin. A failed re-signing is logged and
retried at the next check: it never stops the daemon.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge

from amcp.crypto.pki import FleetCA, PkiError
from amcp.runtime.supervisor import ChildContext, ChildSpec
from cloud.config import CrlSettings, EnrolmentSettings

__all__ = ["WARN_EVERY_S", "CrlCheck", "CrlRenewer", "crl_child_specs"]

log = logging.getLogger(__name__)

WARN_EVERY_S = 86400.0
"""A warning about an expiry that comes closer is repeated once a day, not at every check."""


@dataclass(frozen=True)
class CrlCheck:
    """What one check found and did (times are UNIX seconds; None when unreadable)."""

    renewed: bool
    next_update: float | None
    ca_not_after: float | None


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _next_update(crl: x509.CertificateRevocationList | None) -> float | None:
    when = crl.next_update_utc if crl is not None else None
    return when.timestamp() if when is not None else None


class CrlRenewer:
    """Re-signs the fleet CRL before it expires; reports and warns about CRL and root expiry.

    :meth:`check` is blocking (file I/O, signing); :meth:`run` is the supervisor child.
    ``clock`` gives the wall-clock time in UNIX seconds (certificate dates are wall-clock).
    """

    def __init__(
        self,
        ca: FleetCA,
        settings: CrlSettings,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ca = ca
        self.settings = settings
        self.clock = clock
        self._next_update: float | None = None
        self._ca_not_after: float | None = None
        self._warned: dict[str, float] = {}
        Gauge(
            "cybernetic_pki_crl_next_update_seconds",
            "Seconds until the fleet CRL's next update (negative: expired, the broker refuses"
            " every gateway; NaN: unreadable)",
            registry=registry,
        ).set_function(lambda: self._left(self._next_update))
        Gauge(
            "cybernetic_pki_ca_expiry_seconds",
            "Seconds until the fleet root certificate expires (NaN: unreadable)",
            registry=registry,
        ).set_function(lambda: self._left(self._ca_not_after))
        self.renewals = Counter(
            "cybernetic_pki_crl_renewals",
            "Scheduled re-signings of the fleet CRL, by result (ok, failed)",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "failed"):
            self.renewals.labels(result=result)

    def _left(self, when: float | None) -> float:
        return math.nan if when is None else when - self.clock()

    # -- one check ------------------------------------------------------------------------------
    def check(self) -> CrlCheck:
        """Re-sign the CRL if it is due, read both expiry dates, warn if one is close."""
        now = self.clock()
        try:
            crl = self.ca.crl()
        except (PkiError, OSError):
            crl = None  # no readable root: re-signing fails too, and says why
        next_update = _next_update(crl)
        renewed = False
        if next_update is None or next_update - now < self.settings.renew_before_s:
            renewed, next_update = self._renew(crl, next_update)
        self._next_update = next_update
        self._ca_not_after = self._root_not_after()
        self._warn(now)
        return CrlCheck(renewed, self._next_update, self._ca_not_after)

    def _root_not_after(self) -> float | None:
        try:
            return self.ca.certificate().not_valid_after_utc.timestamp()
        except (PkiError, OSError) as exc:
            error = str(exc)
        log.error("fleet root certificate unreadable", extra={"error": error})
        return None

    def _renew(
        self, old: x509.CertificateRevocationList | None, old_next: float | None
    ) -> tuple[bool, float | None]:
        path = self.ca.crl_path
        new: x509.CertificateRevocationList | None = None
        error = ""
        try:
            self.ca.write_crl(
                validity=dt.timedelta(seconds=self.settings.valid_s), keep_listed=True
            )
            new = self.ca.crl()
        except (PkiError, OSError, KeyError, ValueError) as exc:  # KeyError: no such owner
            error = str(exc) or type(exc).__name__
        if error:
            self.renewals.labels(result="failed").inc()
            log.error(
                "fleet CRL could not be re-signed; retrying at the next check",
                extra={"path": str(path), "error": error},
            )
            return False, old_next
        self.renewals.labels(result="ok").inc()
        next_update = _next_update(new)
        reloaded = self._reload_broker()
        log.info(
            "fleet CRL re-signed",
            extra={
                "path": str(path),
                "was_valid_until": _iso(old_next) if old_next is not None else None,
                "replaced": "an unreadable or foreign CRL" if old is None else "an expiring CRL",
                "next_update": _iso(next_update) if next_update is not None else None,
                "revoked": len(list(new)) if new is not None else None,
                "broker_reloaded": reloaded,
            },
        )
        return True, next_update

    def _reload_broker(self) -> bool:
        """SIGHUP to the broker named by ``broker_pid_file``; False when there is none."""
        pid_file = self.settings.broker_pid_file
        if not pid_file:
            return False
        try:
            pid = int(Path(pid_file).read_text().split()[0])
            if pid <= 1:
                msg = f"{pid} is not a broker's pid"
                raise ValueError(msg)  # noqa: TRY301 - one handler for every way this fails
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, IndexError) as exc:
            log.warning(
                "could not signal the broker to reload the CRL: reload it yourself",
                extra={"pid_file": pid_file, "error": str(exc) or type(exc).__name__},
            )
            return False
        return True

    def _warn(self, now: float) -> None:
        crl_left = None if self._next_update is None else self._next_update - now
        if crl_left is None or crl_left < self.settings.warn_before_s:
            if crl_left is None:
                message = "fleet CRL is missing or unreadable: the broker may refuse every gateway"
            elif crl_left > 0:
                message = "fleet CRL expires soon: once past, the broker refuses every gateway"
            else:
                message = "fleet CRL has expired: the broker refuses every gateway"
            extra: dict[str, object] = {
                "path": str(self.ca.crl_path),
                "seconds_left": crl_left,
                "fix": "cybernetic pki crl --dir <pki dir>, then reload the broker",
            }
            if self._next_update is not None:
                extra["next_update"] = _iso(self._next_update)
            self._warn_once("crl", now, message, extra)
        else:
            self._warned.pop("crl", None)  # renewed: warn at once if it comes close again
        ca_left = None if self._ca_not_after is None else self._ca_not_after - now
        if ca_left is not None and ca_left < self.settings.ca_warn_before_s:
            message = (
                "fleet root certificate expires soon: then every gateway must enrol with a new root"
                if ca_left > 0
                else "fleet root certificate has expired: no gateway can connect"
            )
            extra = {"path": str(self.ca.cert_path), "seconds_left": ca_left}
            if self._ca_not_after is not None:
                extra["not_after"] = _iso(self._ca_not_after)
            self._warn_once("ca", now, message, extra)
        else:
            self._warned.pop("ca", None)

    def _warn_once(self, key: str, now: float, message: str, extra: dict[str, object]) -> None:
        last = self._warned.get(key)
        if last is not None and now - last < WARN_EVERY_S:
            return
        self._warned[key] = now
        log.warning(message, extra=extra)

    # -- the supervisor child -------------------------------------------------------------------
    async def run(self, ctx: ChildContext) -> None:
        """Check at start, then every ``check_every_s``, until cancelled."""
        while True:
            await asyncio.to_thread(self.check)
            ctx.ready()
            await asyncio.sleep(self.settings.check_every_s)


def crl_child_specs(settings: EnrolmentSettings, registry: CollectorRegistry) -> list[ChildSpec]:
    """The ``crl`` child for the cloud's workers: one when the daemon holds the fleet PKI."""
    if not settings.pki_dir:
        return []
    renewer = CrlRenewer(FleetCA(Path(settings.pki_dir) / "ca"), settings.crl, registry)
    return [ChildSpec("crl", renewer.run, shutdown_timeout=5)]
