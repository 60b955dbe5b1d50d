"""Intervals with a known coverage for the number of values at hand: pure functions, driver side only.

Every interval autotune prints comes from here and says the level it actually achieves for its ``n``,
not the level it aimed at. Trial processes never import this module (``autotune.measure`` is the one
they import, and it stays light).

- :func:`median_interval`: the distribution-free interval for a median from order statistics. For
  ``n`` independent draws of a continuous distribution, ``[x_(k), x_(n+1-k)]`` covers the median with
  probability ``1 - 2 P(Binomial(n, 1/2) <= k - 1)``, whatever the distribution (Conover 1999,
  *Practical Nonparametric Statistics*, 3rd ed., section 3.2; Hahn & Meeker 1991, *Statistical
  Intervals*, section 5.2). Three values give 75%, five 93.75%.
- :func:`ratio_of_medians_interval`: for the ratio of the medians of two independent samples, the
  quotient of their two order-statistic intervals. Both cover with probability ``a * b``, and then the
  quotient covers, so its level is at least ``a * b`` (the Bonferroni-style product bound).
- :func:`percentile_bootstrap_median`: the percentile bootstrap autotune used before (Efron &
  Tibshirani 1993). Kept only so that the coverage benchmark and tests can show why it was replaced:
  for 3 values it returns their min and max, a 75% interval, while saying 95%.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# The level an interval aims at; with too few values for it, the widest interval ([min, max]) is
# returned with the (lower) level it achieves. 95% is the conventional level of a confidence interval.
TARGET_LEVEL = 0.95

ORDER_STATISTIC = "order-statistic"
ORDER_STATISTIC_PRODUCT = "order-statistic-product"
METHOD_TEXT = {
    ORDER_STATISTIC: "distribution-free order-statistic interval of the median (Conover 1999, sec. 3.2)",
    ORDER_STATISTIC_PRODUCT: "quotient of the order-statistic intervals of the two medians "
                             "(level at least the product of theirs)",
}

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """An interval and the coverage it achieves.

    Attributes:
        low: Lower end.
        high: Upper end.
        level: Probability that the interval covers the true value: exact for continuous
            distributions, or a lower bound when ``at_least``.
        method: :data:`ORDER_STATISTIC` or :data:`ORDER_STATISTIC_PRODUCT`.
        n: Values the interval was made from (per sample, the smaller one for a ratio).
        at_least: ``level`` is a lower bound rather than exact.
    """

    low: float
    high: float
    level: float
    method: str
    n: int
    at_least: bool = False

    def level_text(self) -> str:
        """The level in words, e.g. ``93.8%``, ``75%`` or ``at least 56.2%``."""
        return ("at least " if self.at_least else "") + percent(self.level)


def percent(level: float) -> str:
    """``0.9375`` -> ``93.8%``, ``0.75`` -> ``75%``."""
    return f"{level * 100:.1f}".rstrip("0").rstrip(".") + "%"


def order_statistic_level(n: int, k: int) -> float:
    """Coverage of ``[x_(k), x_(n+1-k)]`` for the median of ``n`` continuous i.i.d. values.

    Raises:
        ValueError: ``k`` is not between 1 and ``(n + 1) // 2``.
    """
    if not 1 <= k <= (n + 1) // 2:
        raise ValueError(f"rank {k} is not between 1 and {(n + 1) // 2} for {n} values")
    below = sum(math.comb(n, i) for i in range(k))
    return max(0.0, 1 - 2 * below / 2**n)


def order_statistic_rank(n: int, target: float = TARGET_LEVEL) -> int:
    """The largest rank ``k`` (the narrowest interval) whose level is at least ``target``; 1 if none is.

    Raises:
        ValueError: ``n`` < 1 or ``target`` outside (0, 1).
    """
    if n < 1:
        raise ValueError("no values to make an interval from")
    _check_level(target)
    k = 1
    while k + 1 <= (n + 1) // 2 and order_statistic_level(n, k + 1) >= target:
        k += 1
    return k


def median_interval(values: Sequence[float], target: float = TARGET_LEVEL) -> Interval:
    """Distribution-free interval for the median of the distribution ``values`` were drawn from.

    Args:
        values: Independent draws, at least one.
        target: Level aimed at; the achieved level is returned, and is lower when ``values`` are too
            few (3 values: 75%, 5: 93.75%).

    Raises:
        ValueError: ``values`` is empty or ``target`` outside (0, 1).
    """
    ordered = sorted(values)
    n = len(ordered)
    k = order_statistic_rank(n, target)
    return Interval(ordered[k - 1], ordered[n - k], order_statistic_level(n, k), ORDER_STATISTIC, n)


def ratio_of_medians_interval(
    numerator: Sequence[float], denominator: Sequence[float], target: float = TARGET_LEVEL
) -> Interval:
    """Interval for ``median(numerator distribution) / median(denominator distribution)``.

    The samples are independent (two processes). Each median gets an order-statistic interval aimed at
    ``sqrt(target)``; the quotient of the two covers whenever both do, so its level is at least the
    product of theirs. Positive values only.

    Raises:
        ValueError: A sample is empty or holds a value <= 0.
    """
    if not numerator or not denominator:
        raise ValueError("no values to make an interval from")
    if min(numerator) <= 0 or min(denominator) <= 0:
        raise ValueError("a ratio interval needs positive values")
    _check_level(target)
    top = median_interval(numerator, math.sqrt(target))
    bottom = median_interval(denominator, math.sqrt(target))
    return Interval(top.low / bottom.high, top.high / bottom.low, top.level * bottom.level,
                    ORDER_STATISTIC_PRODUCT, min(top.n, bottom.n), at_least=True)


def percentile_bootstrap_median(
    values: Sequence[float], confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """The percentile-bootstrap interval of the median that autotune printed before (not used now).

    Returns:
        ``(low, high)``, claimed to cover with probability ``confidence`` (it does not for small n).
    """
    if not values:
        raise ValueError("no values to bootstrap")
    _check_level(confidence)
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(BOOTSTRAP_RESAMPLES))
    tail = (1 - confidence) / 2
    return (medians[math.floor(tail * (BOOTSTRAP_RESAMPLES - 1))],
            medians[math.ceil((1 - tail) * (BOOTSTRAP_RESAMPLES - 1))])


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
