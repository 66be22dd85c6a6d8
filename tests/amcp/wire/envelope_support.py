"""Helpers for envelope tests: a settable wall clock, a gateway link, sample batches."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from amcp.crypto import Ed25519Signer, HmacSigner, Keyring
from amcp.replay import ReplayGuard
from amcp.wire import Opener, Reading, Sealer, TelemetryBatch

T0 = 1_800_000_000.0


@dataclass
class SetClock:
    now: float = T0

    def time(self) -> float:
        return self.now


@dataclass
class Link:
    clock: SetClock
    signer: Ed25519Signer
    hmac: HmacSigner
    keyring: Keyring
    guard: ReplayGuard
    opener: Opener
    sealer: Sealer
    hmac_sealer: Sealer
    closed: list[ReplayGuard] = field(default_factory=list)


def batch(n: int = 3, gateway: str = "gw-1") -> TelemetryBatch:
    return TelemetryBatch(
        batch_id=os.urandom(8).hex(),
        gateway=gateway,
        readings=[
            Reading(device="d1", boot="b", seq=i, ts_ms=1_700_000_000_000 + i, values={"t": i})
            for i in range(n)
        ],
    )
