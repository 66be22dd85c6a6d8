"""S2's phi-accrual detector: the shared math of :mod:`amcp.runtime.phi` on ``[s2.phi]``.

The detector lives in ``amcp`` so the cloud's fleet table (``cloud.fleet``) judges gateway
heartbeats with the same code; this module types it with S2's :class:`PhiConfig` and keeps the
names S2 and its tests import.
"""

from __future__ import annotations

from amcp.runtime.phi import MIN_INTERVAL_S, deviations_at, phi_of
from amcp.runtime.phi import PhiAccrual as _PhiAccrual
from gateway.s2.config import PhiConfig

__all__ = ["MIN_INTERVAL_S", "PhiAccrual", "deviations_at", "phi_of"]


class PhiAccrual(_PhiAccrual[PhiConfig]):
    """Heartbeat histories of devices and child units, on ``[s2.phi]`` (see
    :class:`amcp.runtime.phi.PhiAccrual`)."""
