"""Order statistics over small samples (stdlib only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Median, p95, p99, min, max and count of some values (NaN where there are none)."""

    median: float
    p95: float
    p99: float
    min: float
    max: float
    n: int


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def spread(values: Sequence[float]) -> Spread:
    return Spread(
        median=median(values),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
        min=min(values, default=math.nan),
        max=max(values, default=math.nan),
        n=len(values),
    )
