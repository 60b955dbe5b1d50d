"""Pruning: stop a trial whose running throughput is clearly below the best completed trial.

Optuna's median and percentile pruners compare a trial with other trials at the same step; here every
step of a trial measures the same thing, so the useful question is simpler: after a few timed steps, is
this configuration far slower than the best one already measured? The driver never asks for the
baseline or the vendor reference, which are always measured in full.
"""

from __future__ import annotations

import optuna
from optuna.pruners import BasePruner

# "Clearly slower": below half the best throughput. Trials closer than that are measured in full,
# since a few noisy steps cannot rank configurations within a factor of two reliably.
DEFAULT_FRACTION = 0.5
DEFAULT_WARMUP_STEPS = 2


class BestFractionPruner(BasePruner):
    """Prune when a trial's latest intermediate value is below ``fraction`` of the best value.

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
        completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not completed:
            return False
        best = max(t.value for t in completed if t.value is not None)
        latest = trial.intermediate_values[max(trial.intermediate_values)]
        return latest < self.fraction * best
