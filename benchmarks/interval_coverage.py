"""Do autotune's intervals cover what they say? Prints a Markdown table: method x n x distribution.

Usage: python benchmarks/interval_coverage.py [--sims 4000] [--seed 0]

Each row simulates many studies and counts how often the interval covers the true value:

- ``paired rounds``: the confirmation stage. Each round runs two configurations back to back in fresh
  processes; a drift of the machine (a random walk from round to round) multiplies both alike, and
  each process adds its own noise (the scenario's distribution). The interval is for the median of
  the per-round ratios; the true value is the median of the ratio's distribution (computed from a
  large sample, since drift cancels in a ratio). Methods: ``order-statistic`` (what autotune prints)
  and ``percentile bootstrap`` (what it printed before, claiming 95%).
- ``within one process``: no confirmation rounds. One process per configuration, ``n`` timed steps
  each (2% step-to-step noise); the interval is for the ratio of those two processes' median step
  times (``order-statistic-product``, level "at least"). Its coverage of the value re-runs would give
  (the median over processes) is shown too: it says nothing about re-runs.

The scenarios are the noise of one process's throughput around its configuration's true value, sized
from the development host (finalists varied 5-9% between rounds, CVs within a trial were 1-5%).
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import statistics
from collections.abc import Callable

from autotune.intervals import median_interval, percent, percentile_bootstrap_median, ratio_of_medians_interval

# True throughputs of the two configurations (their ratio is the speedup); arbitrary units.
FAST, SLOW = 15.0, 1.0
# Between-round drift of the machine: log-throughput random walk, 5% per round.
DRIFT = 0.05
# Step-to-step noise inside one process (CV of step times on the development host: 1-5%).
STEP_NOISE = 0.02
TRUE_MEDIAN_DRAWS = 200_000

Noise = Callable[[random.Random], float]

# One process's throughput multiplier, per configuration: (fast's, slow's).
SCENARIOS: dict[str, tuple[Noise, Noise]] = {
    "normal": (lambda r: 1 + 0.07 * r.gauss(0, 1), lambda r: 1 + 0.02 * r.gauss(0, 1)),
    "lognormal (skewed)": (lambda r: math.exp(0.25 * r.gauss(0, 1)), lambda r: math.exp(0.05 * r.gauss(0, 1))),
    # Interference only ever slows a process down: one-sided, heavily skewed.
    "slowdowns (exponential)": (lambda r: 1 - min(0.9, 0.06 * r.expovariate(1.0)),
                                lambda r: 1 - min(0.9, 0.02 * r.expovariate(1.0))),
}


def paired_ratios(scenario: str, n: int, rng: random.Random) -> list[float]:
    """Per-round throughput ratios fast / slow of ``n`` rounds with drift common to a round."""
    fast, slow = SCENARIOS[scenario]
    drift, ratios = 1.0, []
    for _ in range(n):
        drift *= math.exp(DRIFT * rng.gauss(0, 1))
        ratios.append((drift * FAST * fast(rng)) / (drift * SLOW * slow(rng)))
    return ratios


@functools.cache
def true_median_ratio(scenario: str, seed: int = 12345) -> float:
    """Median of the per-round ratio's distribution (drift cancels, so one large sample gives it)."""
    rng = random.Random(seed)
    fast, slow = SCENARIOS[scenario]
    return statistics.median(FAST * fast(rng) / (SLOW * slow(rng)) for _ in range(TRUE_MEDIAN_DRAWS))


def paired_coverage(scenario: str, n: int, sims: int, seed: int, method: str = "order-statistic",
                    truth: float | None = None) -> tuple[float, float]:
    """``(stated level, fraction of simulated studies whose interval covered the true median)``."""
    truth = true_median_ratio(scenario) if truth is None else truth
    rng = random.Random(seed)
    covered, stated = 0, 0.0
    for _ in range(sims):
        ratios = paired_ratios(scenario, n, rng)
        if method == "order-statistic":
            interval = median_interval(ratios)
            low, high, stated = interval.low, interval.high, interval.level
        else:
            (low, high), stated = percentile_bootstrap_median(ratios, seed=rng.randrange(2**31)), 0.95
        covered += low <= truth <= high
    return stated, covered / sims


def within_process_coverage(scenario: str, n: int, sims: int, seed: int,
                            truth: float | None = None) -> tuple[float, float, float]:
    """``(stated level, coverage of the two processes' ratio, coverage of the re-run median)``."""
    truth = true_median_ratio(scenario) if truth is None else truth
    fast, slow = SCENARIOS[scenario]
    rng = random.Random(seed)
    covered = covered_reruns = 0
    stated = 0.0
    for _ in range(sims):
        fast_rate, slow_rate = FAST * fast(rng), SLOW * slow(rng)  # this pair of processes
        fast_steps = [math.exp(STEP_NOISE * rng.gauss(0, 1)) / fast_rate for _ in range(n)]
        slow_steps = [math.exp(STEP_NOISE * rng.gauss(0, 1)) / slow_rate for _ in range(n)]
        interval = ratio_of_medians_interval(slow_steps, fast_steps)
        stated = interval.level
        covered += interval.low <= fast_rate / slow_rate <= interval.high
        covered_reruns += interval.low <= truth <= interval.high
    return stated, covered / sims, covered_reruns / sims


def table(sims: int, seed: int) -> list[str]:
    """The Markdown table."""
    lines = ["| method | n | distribution | stated level | coverage | coverage of re-runs |",
             "|---|---|---|---|---|---|"]
    truths = {scenario: true_median_ratio(scenario) for scenario in SCENARIOS}
    for n in (3, 5, 8, 10):
        for scenario in SCENARIOS:
            stated, covered = paired_coverage(scenario, n, sims, seed, truth=truths[scenario])
            lines.append(f"| paired rounds, order-statistic (now) | {n} | {scenario} | {percent(stated)} | "
                         f"{percent(covered)} | (same) |")
    for n in (3, 5, 10):
        for scenario in SCENARIOS:
            stated, covered = paired_coverage(scenario, n, max(200, sims // 8), seed, method="bootstrap",
                                              truth=truths[scenario])
            lines.append(f"| paired rounds, percentile bootstrap (before) | {n} | {scenario} | "
                         f"{percent(stated)} | {percent(covered)} | (same) |")
    for n in (3, 10, 20):
        for scenario in SCENARIOS:
            stated, covered, reruns = within_process_coverage(scenario, n, sims, seed, truth=truths[scenario])
            lines.append(f"| within one process, order-statistic product | {n} steps | {scenario} | "
                         f"at least {percent(stated)} | {percent(covered)} | {percent(reruns)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=4000, help="simulated studies per row (default 4000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("\n".join(table(args.sims, args.seed)))


if __name__ == "__main__":
    main()
