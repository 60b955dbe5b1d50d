"""Which stored trials may be a winner: the feasible ones.

A trial may complete with a figure and still be no answer: over the user's latency bound
(``run --max-latency``), or computing other outputs than the reference. Each such test is an Optuna named
constraint (``trial.set_constraint(name, excess)``, positive when violated), told before the trial's value,
so that Optuna's ``best_trial`` and TPE treat the trial as infeasible. Everything that chooses finalists,
winners or exports asks :func:`is_feasible`, whatever the constraint is.
"""

from __future__ import annotations

from typing import Any

INFEASIBLE_ATTR = "infeasible"
"""Trial user attribute: why a completed trial is infeasible, in words, with the figure that failed."""


def is_feasible(trial: Any) -> bool:
    """Whether every named constraint of ``trial`` (a FrozenTrial) is met: all values zero or less."""
    constraints = getattr(trial, "constraints", None) or {}
    values = constraints.values() if isinstance(constraints, dict) else constraints
    return all(value <= 0 for value in values)
