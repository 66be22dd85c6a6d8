"""Keys, keyring states and HKDF link keys; unknown and revoked keys are distinct errors."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amcp.crypto import Ed25519Signer, HmacSigner, Keyring, derive_link_keys
from amcp.crypto.keys import KeyEntry
from amcp.replay import ReplayGuard
from amcp.wire import (
    ExpiredKeyError,
    Heartbeat,
    Opener,
    RevokedKeyError,
    Sealer,
    UnknownKeyError,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now


def hb() -> Heartbeat:
    return Heartbeat(node="gw", seq=1, ts_ms=1)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=20)
@given(use_hmac=st.booleans())
def test_unknown_and_revoked_keys_are_distinct_errors(use_hmac: bool) -> None:
    clock = Clock()
    signer = HmacSigner("gw", os.urandom(32)) if use_hmac else Ed25519Signer.generate("gw")
    data = Sealer(signer, clock=clock).seal(hb(), "t")
    with pytest.raises(UnknownKeyError):
        Opener(Keyring(), ReplayGuard(None), clock).open(data, "t")
    keyring = Keyring([signer.entry()])
    keyring.revoke(signer.key_id, int(clock.now * 1000) - 1)
    with pytest.raises(RevokedKeyError):
        Opener(keyring, ReplayGuard(None), clock).open(data, "t")


def test_rotation_overlap_then_expiry() -> None:
    clock = Clock()
    old = Ed25519Signer.generate("gw")
    new = Ed25519Signer.generate("gw")
    keyring = Keyring([old.entry(), new.entry()])
    keyring.retire(old.key_id, int(clock.now * 1000) + 60_000)
    opener = Opener(keyring, ReplayGuard(None), clock)
    sealer = Sealer(old, clock=clock)
    assert opener.open(sealer.seal(hb(), "t"), "t") is not None  # inside the overlap
    sealer.rekey(new)
    assert opener.open(sealer.seal(hb(), "t"), "t") is not None
    clock.now += 61
    with pytest.raises(ExpiredKeyError):
        opener.open(Sealer(old, clock=clock).seal(hb(), "t"), "t")
    assert opener.open(sealer.seal(hb(), "t"), "t") is not None
    assert keyring.entry(old.key_id).status(int(clock.now * 1000)) == "retired"


def test_keyring_refuses_an_entry_whose_id_lies() -> None:
    real = Ed25519Signer.generate("gw").entry()
    other = Ed25519Signer.generate("gw").entry()
    with pytest.raises(ValueError, match="does not match"):
        Keyring([KeyEntry(real.key_id, "gw", "ed25519", other.material)])


def test_keyring_json_round_trip(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path  # noqa: PLC0415

    path = Path(tmp_path) / "k.json"
    keyring = Keyring([Ed25519Signer.generate("a").entry(), HmacSigner("b", b"s" * 32).entry()])
    keyring.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Keyring.load(path).entries() == keyring.entries()


def test_link_keys_agree_and_differ_by_direction_and_epoch() -> None:
    secret = os.urandom(32)
    gw = derive_link_keys(secret, gateway="gw-1", cloud="cloud", salt=b"s")
    cloud = derive_link_keys(secret, gateway="gw-1", cloud="cloud", salt=b"s")
    assert gw.up.key_id == cloud.up.key_id
    assert gw.up.key_id != gw.down.key_id
    assert gw.up.owner == "gw-1"
    assert gw.down.owner == "cloud"
    renewed = derive_link_keys(secret, gateway="gw-1", cloud="cloud", salt=b"s", epoch=1)
    assert renewed.up.key_id != gw.up.key_id


def test_short_hmac_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="HMAC secret"):
        HmacSigner("gw", b"short")
