"""A gateway without a policy never loads wasmtime (about 6 MB of resident memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import wasm


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def test_the_gateway_and_its_config_load_without_wasmtime() -> None:
    loaded = _modules_after("import gateway.app\nfrom wasm import PolicyConfig")
    assert "gateway.app" in loaded
    assert "wasmtime" not in loaded


def test_every_public_name_still_resolves() -> None:
    for name in wasm.__all__:
        assert getattr(wasm, name) is not None
    assert callable(wasm.enforce)  # the function, not a submodule of the same name
    assert "wasmtime" in _modules_after("from wasm import PolicyAgent")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = wasm.nope  # type: ignore[attr-defined]
