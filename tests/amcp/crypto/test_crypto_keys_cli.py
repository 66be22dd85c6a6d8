"""`cybernetic keys gen|show|rotate|revoke` against a real key directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amcp.crypto.keystore import KeyStore
from amcp.replay import ReplayGuard
from amcp.wire import Heartbeat, Opener, RevokedKeyError, Sealer
from cybernetic.__main__ import main


def keys(tmp: Path, *args: str) -> int:
    return main(["keys", "--dir", str(tmp), *args])


def show(tmp: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert keys(tmp, "show", "--json") == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_gen_rotate_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "keys"
    assert keys(d, "gen", "--node", "gw-1") == 0
    assert keys(d, "gen", "--node", "gw-1") == 2  # refuses to overwrite
    first = show(d, capsys)
    [k1] = first["keys"]  # type: ignore[misc]
    assert k1["active"]
    assert k1["status"] == "active"
    private = next((d / "private").iterdir())
    assert private.stat().st_mode & 0o777 == 0o600

    store = KeyStore(d)
    old_envelope = Sealer(store.signer()).seal(Heartbeat(node="gw-1", seq=1, ts_ms=1), "t")

    assert keys(d, "rotate", "--overlap", "3600") == 0
    rows = {r["key_id"]: r for r in show(d, capsys)["keys"]}  # type: ignore[attr-defined]
    assert rows[k1["key_id"]]["status"] == "overlap"
    assert keys(d, "revoke", store.identity().active) == 2  # active key: rotate first
    assert keys(d, "revoke", k1["key_id"]) == 0
    rows = {r["key_id"]: r for r in show(d, capsys)["keys"]}  # type: ignore[attr-defined]
    assert rows[k1["key_id"]]["status"] == "revoked"
    assert len(list((d / "private").iterdir())) == 1

    with pytest.raises(RevokedKeyError):
        Opener(store.keyring(), ReplayGuard(None)).open(old_envelope, "t")
    fresh = Sealer(store.signer()).seal(Heartbeat(node="gw-1", seq=2, ts_ms=2), "t")
    assert Opener(store.keyring(), ReplayGuard(None)).open(fresh, "t") is not None


def test_show_without_identity_fails_cleanly(tmp_path: Path) -> None:
    assert keys(tmp_path / "none", "show") == 2
