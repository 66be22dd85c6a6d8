"""The engine's role and counters (shared by the engine, the merge side and transports)."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    GATEWAY = "gateway"
    CLOUD = "cloud"


@dataclass
class SyncStats:
    """Counters for metrics and tests (the transports add bytes)."""

    frames_sent: int = 0
    frames_received: int = 0
    last_received_ms: int = 0
    """Wall-clock time of the last frame from a peer (``cybernetic status``: last sync)."""
    bytes_sent: int = 0
    bytes_received: int = 0
    deltas_sent: int = 0
    rows_sent: int = 0
    rows_merged: int = 0
    refused: int = 0
    refused_by: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(peer, namespace, reason) → rows refused."""
    gaps: int = 0
    stalls: int = 0
    resyncs: int = 0
    skew_refusals: int = 0
    malformed: int = 0
