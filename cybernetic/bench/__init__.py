"""Benchmarks behind `cybernetic bench NAME --json`.

Each benchmark is one module here exposing:

- ``DESCRIPTION: str`` (one line for ``cybernetic bench --list``),
- ``add_arguments(parser) -> None`` (optional: extra flags such as ``--messages``),
- ``run(args) -> dict[str, object]`` returning the JSON fields its issue names.

Contract (docs/architecture.md, "Contracts"): one JSON object on stdout, progress on
stderr, and every benchmark measures its reference (raw library call, bare broker, naive
method) in the same run and reports the ratio. Use :func:`progress` for progress lines and
:func:`median_of` to repeat a measurement on these noisy machines.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable


def progress(message: str) -> None:
    """Write a progress line to stderr; stdout is reserved for the JSON result."""
    print(message, file=sys.stderr, flush=True)


def median_of(runs: int, measure: Callable[[], float]) -> float:
    """Run ``measure`` ``runs`` times and return the median of its results."""
    return statistics.median(measure() for _ in range(runs))
