from __future__ import annotations

import random
import statistics

import pytest

from autotune.measure import (
    HIGH_CV,
    Summary,
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


@pytest.mark.parametrize("call", [lambda: summarize([]), lambda: mad([])], ids=["summarize", "mad"])
def test_empty_input_raises_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_measure_holds_no_interval_machinery() -> None:
    # Trial processes import autotune.measure: intervals live on the driver side (autotune.intervals).
    import autotune.measure as measure

    assert not [name for name in vars(measure) if "bootstrap" in name or "interval" in name]
