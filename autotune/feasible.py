"""Which completed trials may win: those every constraint allows.

A trial can be measured and still not be a candidate: its outputs disagree with the reference beyond the
tolerance (constraint ``agreement``, see :mod:`autotune.agreement`), or it is over the user's latency bound
(constraint ``latency``, ``run --max-latency``). Such a trial is stored COMPLETE with its real figure, and
with Optuna's named constraints (:meth:`optuna.trial.Trial.set_constraint`, positive: violated), so TPE
learns the region is infeasible and ``Study.best_trial`` skips it. Everything that picks a winner, a
finalist or a pruning yardstick asks :func:`is_feasible` too.
"""

from __future__ import annotations

from collections.abc import Iterable

import optuna

INFEASIBLE_ATTR = "infeasible"
"""Trial user attribute: why a completed trial is over ``--max-latency``, in words, with the figure."""

WARM_STARTS_ATTR = "warm_starts"
"""Study user attribute: the warm starts applied to it (:mod:`autotune.study.warm`)."""

PRIOR_ROLE = "prior"
"""Trial role of an earlier study's known-bad configuration that a warm start hands to the sampler
(:mod:`autotune.study.warm`): stored PRUNED, never measured in this study, never counted in its figures."""


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether every constraint of ``trial`` holds (a trial without constraints is feasible)."""
    return all(value <= 0.0 for value in trial.constraints.values())


def feasible_completed(trials: Iterable[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE, feasible trials among ``trials``, in order."""
    return [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and is_feasible(t)]

