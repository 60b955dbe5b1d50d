from __future__ import annotations

import random
import statistics

import pytest

from autotune.measure import (
    HIGH_CV,
    Summary,
    bootstrap_median_ci,
    bootstrap_ratio_ci,
    mad,
    outlier_indices,
    spread_warning,
    summarize,
)


def normal_sample(n: int, mu: float, sigma: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mu, sigma) for _ in range(n)]


@pytest.mark.parametrize(
    ("values", "median", "deviation"),
    [
        ([1.0], 1.0, 0.0),
        ([1.0, 3.0], 2.0, 1.0),
        ([1.0, 2.0, 3.0, 4.0, 100.0], 3.0, 1.0),
        ([2.0, 2.0, 2.0, 2.0], 2.0, 0.0),
        ([0.5, 0.1, 0.3], 0.3, 0.2),
    ],
)
def test_median_and_mad(values: list[float], median: float, deviation: float) -> None:
    assert statistics.median(values) == pytest.approx(median)
    assert mad(values) == pytest.approx(deviation)
    assert summarize(values).median == pytest.approx(median)
    assert summarize(values).mad == pytest.approx(deviation)


def test_summarize_fields() -> None:
    summary = summarize([0.10, 0.12, 0.11, 0.13, 0.14])
    assert summary.n == 5
    assert summary.median == pytest.approx(0.12)
    assert summary.mad == pytest.approx(0.01)
    assert summary.mean == pytest.approx(0.12)
    assert summary.stdev == pytest.approx(statistics.stdev([0.10, 0.12, 0.11, 0.13, 0.14]))
    assert summary.cv == pytest.approx(summary.stdev / 0.12)
    assert summary.minimum == pytest.approx(0.10)
    assert summary.maximum == pytest.approx(0.14)
    assert summary.outliers == ()


def test_summarize_one_step() -> None:
    summary = summarize([0.5])
    assert (summary.n, summary.median, summary.mad, summary.stdev, summary.cv) == (1, 0.5, 0, 0, 0)


def test_clear_outlier_is_flagged() -> None:
    values = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00, 3.00]
    assert outlier_indices(values) == (6,)
    assert summarize(values).outliers == (6,)


def test_fast_outlier_is_flagged_too() -> None:
    assert outlier_indices([1.00, 1.01, 0.99, 1.02, 0.98, 0.10]) == (5,)


def test_moderate_spread_has_no_outliers() -> None:
    assert outlier_indices([1.0, 1.1, 0.9, 1.2, 0.8, 1.05]) == ()


def test_no_outliers_when_mad_is_zero() -> None:
    assert outlier_indices([1.0, 1.0, 1.0, 1.0, 5.0]) == ()


@pytest.mark.parametrize("values", [[], [1.0], [1.0, 100.0]])
def test_no_outliers_for_fewer_than_three_values(values: list[float]) -> None:
    assert outlier_indices(values) == ()


def test_spread_warning_when_cv_is_high() -> None:
    summary = summarize([1.0, 1.5, 0.6, 1.2, 0.9])
    assert summary.cv > HIGH_CV
    warning = spread_warning(summary)
    assert warning is not None
    assert "\n" not in warning
    assert f"{summary.cv:.1%}" in warning
    assert "--set steps=" in warning
    assert "affinity=cores" in warning


def test_spread_warning_mentions_outliers_and_not_steps_when_there_are_many() -> None:
    values = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0, 1.02, 5.0]
    warning = spread_warning(summarize(values))
    assert warning is not None
    assert "outlier" in warning
    assert "--set steps=" not in warning


def test_no_spread_warning_when_cv_is_low() -> None:
    summary = summarize([1.00, 1.01, 0.99, 1.00, 1.01])
    assert summary.cv < HIGH_CV
    assert spread_warning(summary) is None


def test_no_spread_warning_exactly_at_the_threshold() -> None:
    summary = Summary(
        n=5, median=1.0, mad=0.0, mean=1.0, stdev=HIGH_CV, cv=HIGH_CV, minimum=1.0, maximum=1.0,
        outliers=(),
    )
    assert spread_warning(summary) is None


def test_bootstrap_median_ci_contains_the_true_median() -> None:
    sample = normal_sample(200, mu=10.0, sigma=1.0, seed=42)
    low, high = bootstrap_median_ci(sample)
    assert low < 10.0 < high
    assert low <= statistics.median(sample) <= high
    assert high - low < 1.0


def test_bootstrap_median_ci_is_narrower_for_a_larger_sample() -> None:
    small = bootstrap_median_ci(normal_sample(20, mu=10.0, sigma=1.0, seed=1))
    large = bootstrap_median_ci(normal_sample(500, mu=10.0, sigma=1.0, seed=1))
    assert large[1] - large[0] < (small[1] - small[0]) / 2


def test_bootstrap_median_ci_is_reproducible_and_ordered() -> None:
    sample = normal_sample(50, mu=1.0, sigma=0.1, seed=3)
    assert bootstrap_median_ci(sample, seed=7) == bootstrap_median_ci(sample, seed=7)
    low, high = bootstrap_median_ci(sample, confidence=0.5)
    wide_low, wide_high = bootstrap_median_ci(sample, confidence=0.99)
    assert wide_low <= low <= high <= wide_high


def test_bootstrap_of_one_value() -> None:
    assert bootstrap_median_ci([0.25]) == (0.25, 0.25)
    assert bootstrap_ratio_ci([1.0], [0.5]) == (2.0, 2.0)


def test_bootstrap_ratio_ci_brackets_the_true_ratio() -> None:
    slow = normal_sample(100, mu=3.0, sigma=0.15, seed=11)
    fast = normal_sample(100, mu=1.0, sigma=0.05, seed=12)
    low, high = bootstrap_ratio_ci(slow, fast)
    assert low < 3.0 < high
    assert high - low < 0.3
    inverse_low, inverse_high = bootstrap_ratio_ci(fast, slow)
    assert inverse_low < 1 / 3 < inverse_high


@pytest.mark.parametrize(
    "call",
    [
        lambda: summarize([]),
        lambda: mad([]),
        lambda: bootstrap_median_ci([]),
        lambda: bootstrap_ratio_ci([], [1.0]),
        lambda: bootstrap_ratio_ci([1.0], []),
    ],
    ids=["summarize", "mad", "median_ci", "ratio_ci_numerator", "ratio_ci_denominator"],
)
def test_empty_input_raises_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.5])
def test_confidence_outside_zero_one_raises(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_median_ci([1.0, 2.0, 3.0], confidence=confidence)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ratio_ci([1.0, 2.0], [1.0, 2.0], confidence=confidence)
