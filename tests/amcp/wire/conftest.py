"""Fixtures for envelope tests (helpers live in envelope_support)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amcp.crypto import Ed25519Signer, HmacSigner, Keyring
from amcp.replay import ReplayGuard
from amcp.wire import Opener, Sealer
from tests.amcp.wire.envelope_support import Link, SetClock


@pytest.fixture
def clock() -> SetClock:
    return SetClock()


@pytest.fixture
def link(clock: SetClock, tmp_path: Path) -> Link:
    signer = Ed25519Signer.generate("gw-1")
    hm = HmacSigner("gw-1", os.urandom(32))
    keyring = Keyring([signer.entry(), hm.entry()])
    guard = ReplayGuard(tmp_path / "replay.db")
    return Link(
        clock=clock,
        signer=signer,
        hmac=hm,
        keyring=keyring,
        guard=guard,
        opener=Opener(keyring, guard, clock),
        sealer=Sealer(signer, zone="z1", clock=clock),
        hmac_sealer=Sealer(hm, clock=clock),
    )
