"""run_loop runs main exactly once, also when main itself raises ImportError."""

from __future__ import annotations

import pytest

from amcp.runtime.service import run_loop


def test_an_import_error_inside_main_is_raised_not_retried_on_another_loop() -> None:
    calls = []

    async def main() -> int:
        calls.append(1)
        raise ImportError("a plugin's missing module")

    with pytest.raises(ImportError, match="plugin"):
        run_loop(main)
    assert calls == [1]
