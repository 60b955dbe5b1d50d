"""Statistics over step times: pure functions with named constants and cited methods.

Only the standard library is used, so workloads can import this module before TensorFlow.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Iglewicz & Hoaglin (1993), "How to Detect and Handle Outliers": points whose modified z-score
# 0.6745 * |x - median| / MAD exceeds 3.5 are outliers. hyperfine uses the same rule.
MODIFIED_Z_THRESHOLD = 3.5
MAD_TO_SIGMA = 0.6745

# A coefficient of variation above this (5%) makes the median too uncertain to rank close configs.
HIGH_CV = 0.05

BOOTSTRAP_RESAMPLES = 2000


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


def bootstrap_median_ci(
    values: Sequence[float], confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median (Efron & Tibshirani 1993).

    Args:
        values: The sample, at least one value.
        confidence: Coverage, e.g. 0.95.
        seed: Seed of the resampling, so reports are reproducible.

    Returns:
        ``(low, high)``.
    """
    if not values:
        raise ValueError("no values to bootstrap")
    _check_confidence(confidence)
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(
        statistics.median(rng.choices(values, k=n)) for _ in range(BOOTSTRAP_RESAMPLES)
    )
    tail = (1 - confidence) / 2
    low = medians[math.floor(tail * (BOOTSTRAP_RESAMPLES - 1))]
    high = medians[math.ceil((1 - tail) * (BOOTSTRAP_RESAMPLES - 1))]
    return low, high


def bootstrap_ratio_ci(
    numerator: Sequence[float], denominator: Sequence[float], confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``median(numerator) / median(denominator)``.

    The two samples are resampled independently (unpaired), as when two trials ran at different times.
    """
    if not numerator or not denominator:
        raise ValueError("no values to bootstrap")
    _check_confidence(confidence)
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(numerator, k=len(numerator)))
        / statistics.median(rng.choices(denominator, k=len(denominator)))
        for _ in range(BOOTSTRAP_RESAMPLES)
    )
    tail = (1 - confidence) / 2
    return (
        ratios[math.floor(tail * (BOOTSTRAP_RESAMPLES - 1))],
        ratios[math.ceil((1 - tail) * (BOOTSTRAP_RESAMPLES - 1))],
    )


def _check_confidence(confidence: float) -> None:
    # Outside (0, 1) the percentile indices would wrap around the sorted resamples.
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
