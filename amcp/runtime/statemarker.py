"""The state marker: which layout a daemon's state folder is in, for safe downgrades.

``<state_dir>/SCHEMA_VERSION`` holds two lines, ``schema=N`` (the layout this build writes)
and ``min_reader=M`` (the oldest layout a reader must understand to open it). The Debian
package's preinst refuses a downgrade to a build whose reader schema is below ``min_reader``
(packaging/deb/debian/preinst). One number per tier covers all its databases: raise
``STATE_SCHEMA`` whenever any of them migrates, and ``MIN_READER`` when an older build could
no longer read the result.

History: 1 — outbox v1; 2 — outbox rows carry a kind (events); 3 — outbox batches in memory,
CRDT store, S1 and rules state (an outbox v3 lacks the batches table v1/v2 builds expect).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

STATE_SCHEMA = 3
MIN_READER = 3
MARKER = "SCHEMA_VERSION"


def read_marker(state_dir: Path) -> tuple[int, int] | None:
    """(schema, min_reader) of a state folder, or None when it has no readable marker."""
    try:
        text = (state_dir / MARKER).read_text()
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        with contextlib.suppress(ValueError):
            fields[key.strip()] = int(value.strip())
    if "schema" not in fields:
        return None
    return fields["schema"], fields.get("min_reader", fields["schema"])


def write_marker(state_dir: Path) -> None:
    """Record this build's layout, atomically; never lowers a newer marker already there."""
    current = read_marker(state_dir)
    schema, min_reader = STATE_SCHEMA, MIN_READER
    if current is not None:
        schema, min_reader = max(schema, current[0]), max(min_reader, current[1])
        if (schema, min_reader) == current:
            return
    tmp = state_dir / f".{MARKER}.tmp"
    tmp.write_text(f"schema={schema}\nmin_reader={min_reader}\n")
    tmp.replace(state_dir / MARKER)
