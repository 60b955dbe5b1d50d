"""Statistics over step times: pure functions with named constants and cited methods.

Only the standard library is used, so workloads can import this module before TensorFlow. Intervals
(the statistics of many runs, made on the driver side) live in :mod:`autotune.intervals`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Iglewicz & Hoaglin (1993), "How to Detect and Handle Outliers": points whose modified z-score
# 0.6745 * |x - median| / MAD exceeds 3.5 are outliers. hyperfine uses the same rule.
MODIFIED_Z_THRESHOLD = 3.5
MAD_TO_SIGMA = 0.6745

# A coefficient of variation above this (5%) makes the median too uncertain to rank close configs.
HIGH_CV = 0.05

@dataclass(frozen=True)
class Summary:
    """Robust summary of one trial's timed steps.

    Attributes:
        n: Number of timed steps.
        median: Median step time.
        mad: Median absolute deviation from the median.
        mean: Arithmetic mean.
        stdev: Sample standard deviation (0 for one step).
        cv: ``stdev / mean``.
        minimum: Fastest step.
        maximum: Slowest step.
        outliers: Indices of steps flagged by the modified z-score rule.
    """

    n: int
    median: float
    mad: float
    mean: float
    stdev: float
    cv: float
    minimum: float
    maximum: float
    outliers: tuple[int, ...]


def mad(values: Sequence[float]) -> float:
    """Median absolute deviation from the median."""
    med = statistics.median(values)
    return statistics.median(abs(v - med) for v in values)


def outlier_indices(values: Sequence[float]) -> tuple[int, ...]:
    """Indices of outliers by the modified z-score (Iglewicz & Hoaglin).

    Returns an empty tuple when the MAD is zero (no spread to judge against).
    """
    if len(values) < 3:
        return ()
    med = statistics.median(values)
    spread = mad(values)
    if spread == 0:
        return ()
    return tuple(
        i
        for i, v in enumerate(values)
        if MAD_TO_SIGMA * abs(v - med) / spread > MODIFIED_Z_THRESHOLD
    )


def summarize(values: Sequence[float]) -> Summary:
    """Summarize timed step times.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no timed steps to summarize")
    mean = statistics.fmean(values)
    stdev = statistics.stdev(values) if len(values) > 1 else 0.0
    return Summary(
        n=len(values),
        median=statistics.median(values),
        mad=mad(values),
        mean=mean,
        stdev=stdev,
        cv=stdev / mean if mean > 0 else math.inf,
        minimum=min(values),
        maximum=max(values),
        outliers=outlier_indices(values),
    )


def spread_warning(summary: Summary) -> str | None:
    """Say what to change when a trial's spread is too high to trust, else None."""
    if summary.cv <= HIGH_CV:
        return None
    advice = []
    if summary.n < 10:
        advice.append("more timed steps (--set steps=N)")
    if summary.outliers:
        advice.append("a quieter machine (outlier steps seen: other load or frequency changes)")
    advice.append("pinned cores (--set affinity=cores)")
    return (
        f"step times vary by {summary.cv:.1%} (CV); the median is uncertain. "
        f"Try {', '.join(advice)}."
    )
