"""Pruning: stop a trial whose running figure is clearly worse than the best completed trial's.

Optuna's median and percentile pruners compare a trial with other trials at the same step; here every
step of a trial measures the same thing, so the useful question is simpler: after a few timed steps, is
this configuration far slower than the best one already measured? The driver never asks for the
baseline or the vendor reference, which are always measured in full.
"""

from __future__ import annotations

import optuna
from optuna.pruners import BasePruner

from autotune.feasible import feasible_completed

# "Clearly slower": below half the best throughput. Trials closer than that are measured in full,
# since a few noisy steps cannot rank configurations within a factor of two reliably.
DEFAULT_FRACTION = 0.5
# One timed step after the untimed warm-up is enough to see a factor of two: step times of one
# configuration vary by a few percent (30% at worst on a loaded 2-core host), and the slow trials
# pruning exists for (channels_first training, XLA on CPU, large batches) take a minute or more a step.
DEFAULT_WARMUP_STEPS = 1


class BestFractionPruner(BasePruner):
    """Prune when a trial's latest intermediate value is clearly worse than the best value.

    Clearly worse: below ``fraction`` of the best when the study maximizes (a throughput), above the best
    divided by ``fraction`` when it minimizes (a latency): a factor of two either way by default.

    Args:
        fraction: Share of the best completed value a trial must reach.
        n_warmup_steps: Intermediate values a trial reports before it may be pruned.
    """

    def __init__(self, fraction: float = DEFAULT_FRACTION, n_warmup_steps: int = DEFAULT_WARMUP_STEPS) -> None:
        if not 0 < fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        self.fraction = fraction
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """Optuna's pruner hook."""
        if not trial.intermediate_values or len(trial.intermediate_values) < self.n_warmup_steps:
            return False
        latest = trial.intermediate_values[max(trial.intermediate_values)]
        return self.beaten(latest, self.best(study), study.direction == optuna.study.StudyDirection.MAXIMIZE)

    def best(self, study: optuna.Study) -> float | None:
        """The yardstick: the best value of the study's completed, feasible trials (None: none yet)."""
        # An inaccurate trial's speed is no yardstick: it can never win.
        completed = feasible_completed(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        values = [t.value for t in completed if t.value is not None]
        if not values:
            return None
        return max(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE else min(values)

    def beaten(self, value: float, best: float | None, maximize: bool) -> bool:
        """Whether ``value`` is clearly worse than ``best`` (never when there is no best)."""
        if best is None:
            return False
        return value < self.fraction * best if maximize else value > best / self.fraction


# A warm-up (tracing, XLA compilation, the first step) longer than this many steps of the best
# configuration, and than WARMUP_MIN_SECONDS, marks a trap (XLA on CPU at large shapes compiles for
# minutes): waiting for its first timed step would cost more than any result it could bring.
WARMUP_FACTOR = 30.0
WARMUP_MIN_SECONDS = 60.0


def warmup_too_slow(waited_s: float, best_step_s: float | None) -> bool:
    """Whether a trial still warming up after ``waited_s`` should be pruned.

    Args:
        waited_s: Seconds since the trial finished its set-up.
        best_step_s: How long a step of this trial's size takes in the best completed configuration
            (from the objective: see :func:`best_step_seconds`), or None when there is none.
    """
    if not best_step_s or best_step_s <= 0:
        return False
    return waited_s > max(WARMUP_MIN_SECONDS, WARMUP_FACTOR * best_step_s)


def best_step_seconds(work_per_step: float, best_value: float | None, maximize: bool) -> float | None:
    """The step time of ``work_per_step`` at the best completed figure (a rate, or a time per unit)."""
    if not best_value or work_per_step <= 0:
        return None
    return work_per_step / best_value if maximize else work_per_step * best_value
