"""The intervals autotune prints: exact levels, bad input, and coverage by simulation."""

from __future__ import annotations

import functools
import importlib.util
import statistics
from pathlib import Path

import pytest

from autotune.intervals import (
    ORDER_STATISTIC,
    Interval,
    median_interval,
    order_statistic_level,
    order_statistic_rank,
    percent,
    percentile_bootstrap_median,
    ratio_of_medians_interval,
)

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "interval_coverage.py"
# Simulated studies per coverage cell: the standard error of a coverage near 94% is then 0.5 points,
# so the 3-point tolerance is six of them.
SIMS = 2000
TOLERANCE = 0.03


@functools.cache
def simulation():
    spec = importlib.util.spec_from_file_location("interval_coverage", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("n", "k", "level"), [(1, 1, 0.0), (2, 1, 0.5), (3, 1, 0.75), (4, 1, 0.875),
                                                (5, 1, 0.9375), (5, 2, 0.625), (6, 1, 0.96875)])
def test_order_statistic_levels_are_binomial(n, k, level):
    assert order_statistic_level(n, k) == pytest.approx(level)


def test_rank_is_the_narrowest_that_reaches_the_target():
    assert order_statistic_rank(5) == 1  # nothing reaches 95%: the widest, with its own level
    assert order_statistic_rank(10) == 2  # 97.9%; rank 3 would give 89.1%
    assert order_statistic_rank(10, 0.85) == 3
    assert order_statistic_level(10, 3) < 0.95 <= order_statistic_level(10, 2)


def test_median_interval_of_three_rounds_is_min_max_at_75_percent():
    interval = median_interval([14.9, 13.4, 15.7])
    assert (interval.low, interval.high, interval.n) == (13.4, 15.7, 3)
    assert interval.level == pytest.approx(0.75) and interval.method == ORDER_STATISTIC
    assert interval.level_text() == "75%" and not interval.at_least


def test_median_interval_of_ten_drops_the_extremes():
    interval = median_interval([float(v) for v in range(10, 0, -1)])
    assert (interval.low, interval.high) == (2.0, 9.0)
    assert interval.level_text() == "97.9%"


def test_ratio_interval_brackets_the_ratio_with_a_product_level():
    interval = ratio_of_medians_interval([2.0, 2.1, 1.9], [1.0, 1.05, 0.95])
    assert interval.low == pytest.approx(1.9 / 1.05) and interval.high == pytest.approx(2.1 / 0.95)
    assert interval.at_least and interval.level == pytest.approx(0.75**2)
    assert interval.level_text() == "at least 56.2%"


@pytest.mark.parametrize("call", [
    lambda: median_interval([]),
    lambda: median_interval([1.0], target=1.0),
    lambda: order_statistic_level(3, 3),
    lambda: order_statistic_rank(0),
    lambda: ratio_of_medians_interval([], [1.0]),
    lambda: ratio_of_medians_interval([1.0], [0.0]),
    lambda: percentile_bootstrap_median([]),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_percent_text():
    assert [percent(v) for v in (0.9375, 0.75, 0.5625, 1.0)] == ["93.8%", "75%", "56.2%", "100%"]
    assert Interval(1, 2, 0.9, ORDER_STATISTIC, 4).level_text() == "90%"


@pytest.mark.parametrize("scenario", ["normal", "lognormal (skewed)", "slowdowns (exponential)"])
@pytest.mark.parametrize("n", [3, 5, 10])
def test_paired_interval_covers_the_true_median_at_its_stated_level(scenario, n):
    stated, covered = simulation().paired_coverage(scenario, n, SIMS, seed=n)
    assert abs(covered - stated) <= TOLERANCE, (stated, covered)


@pytest.mark.parametrize("scenario", ["normal", "slowdowns (exponential)"])
@pytest.mark.parametrize("n", [3, 10])
def test_within_process_interval_covers_at_least_its_stated_level(scenario, n):
    stated, covered, reruns = simulation().within_process_coverage(scenario, n, SIMS, seed=n)
    assert covered >= stated - TOLERANCE, (stated, covered)
    assert reruns < stated  # between-process spread: it says nothing about re-runs


def test_the_old_three_round_bootstrap_does_not_cover_its_stated_95_percent():
    stated, covered = simulation().paired_coverage("normal", 3, 400, seed=1, method="bootstrap")
    assert stated == 0.95 and covered < stated - TOLERANCE  # about 75%: min and max of three values


def test_simulated_ratios_cancel_the_drift_of_a_round():
    module = simulation()
    import random

    ratios = module.paired_ratios("normal", 4000, random.Random(3))
    assert statistics.median(ratios) == pytest.approx(module.true_median_ratio("normal"), rel=0.01)
