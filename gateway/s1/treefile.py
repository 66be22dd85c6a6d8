"""The unit tree as a JSON file in the state folder, for ``cybernetic units``.

Why a file: it needs no listening socket (nothing new to secure or to firewall on a device),
it survives a wedged event loop long enough to show what was running, and any tool can read
it. The gateway rewrites it every ``tree_interval`` seconds, atomically (temporary file, then
rename), so a reader never sees half of one; ``written_at`` tells the reader how fresh it is.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_tree(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_tree(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
