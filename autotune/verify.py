"""``autotune verify``: does a stored result still hold on this host, today?

It repeats the study's confirmation stage for the stored winner, the vendor config and the baseline
(fresh processes, interleaved rounds) and compares with what the study stored: the winner's throughput
and its paired speedup over the baseline. The new runs are kept in the study's ``verification`` user
attribute; the stored confirmation is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from autotune.confirm import CONFIRMATION_ATTR, Confirmation, Run, confirm, paired_speedup
from autotune.errors import UserError
from autotune.runner import TrialRunner, TrialSpec

VERIFICATION_ATTR = "verification"
# How far the winner's throughput, or the upper end of its speedup interval, may fall below the stored
# figure (the lower end of the stored interval) before it counts as a regression: run-to-run spread of
# whole processes on a quiet host stays within a few percent. Running faster than stored still holds.
REGRESSION_TOLERANCE = 0.10


@dataclass(frozen=True)
class Verdict:
    """The comparison of a verification with the stored confirmation.

    Attributes:
        holds: Whether the stored result still holds.
        stored_rate: The winner's confirmed voxels/s as stored.
        rate: The winner's voxels/s now.
        stored_speedup: Stored paired speedup over the baseline, ``(value, low, high)``.
        speedup: Paired speedup now, ``(value, low, high)``.
        reasons: Why it does not hold (empty when it holds).
    """

    holds: bool
    stored_rate: float
    rate: float | None
    stored_speedup: tuple[float, float, float] | None
    speedup: tuple[float, float, float] | None
    reasons: tuple[str, ...]


def stored_confirmation(study: optuna.Study) -> Confirmation:
    """The study's confirmation stage.

    Raises:
        UserError: The study has none (it ran with --confirm-repeats 0, or never finished a run).
    """
    data = study.user_attrs.get(CONFIRMATION_ATTR)
    if not data:
        raise UserError(f"study {study.study_name!r} has no confirmation stage to verify; "
                        "run `autotune run` with --confirm-repeats > 0 first")
    try:
        confirmation = Confirmation.from_dict(data)
    except (KeyError, TypeError):
        raise UserError(f"study {study.study_name!r} holds an unreadable confirmation") from None
    if confirmation.winner is None:
        raise UserError(f"study {study.study_name!r}: its confirmation stage measured nothing successfully")
    return confirmation


def verify(
    study: optuna.Study,
    make_spec: Callable[[Mapping[str, Any]], TrialSpec],
    *,
    repeats: int,
    runner: TrialRunner | None = None,
    on_run: Callable[[Run], None] | None = None,
) -> Verdict:
    """Re-measure the stored winner against the references and judge the stored result."""
    stored = stored_confirmation(study)
    wanted = [stored.winner, "vendor_recommended", "baseline"]
    candidates = [c for label in dict.fromkeys(wanted) if (c := stored.candidate(label)) is not None]
    now = confirm(study, candidates, make_spec, repeats=repeats, runner=runner, on_run=on_run,
                  attr=VERIFICATION_ATTR)
    return judge(stored, now)


def judge(stored: Confirmation, now: Confirmation) -> Verdict:
    """Compare a new confirmation of the stored winner with the stored one."""
    winner = stored.winner
    stored_rate = stored.rates[winner]
    rate = now.rates.get(winner)
    reasons = []
    if rate is None:
        reasons.append(f"{winner} did not run successfully now")
    elif rate < (1 - REGRESSION_TOLERANCE) * stored_rate:
        reasons.append(f"{winner} runs at {rate / stored_rate:.0%} of its stored throughput")
    old = _triple(stored.speedups.get("vs_baseline"))
    new = _triple(paired_speedup(now.runs, winner, "baseline"))
    if old and new and new[2] < (1 - REGRESSION_TOLERANCE) * old[1]:
        reasons.append(
            f"speedup over baseline is {new[0]:.2f}x ({new[1]:.2f}-{new[2]:.2f}), "
            f"below the stored {old[0]:.2f}x ({old[1]:.2f}-{old[2]:.2f})"
        )
    return Verdict(holds=not reasons, stored_rate=stored_rate, rate=rate, stored_speedup=old,
                   speedup=new, reasons=tuple(reasons))


def _triple(value: Mapping[str, float] | None) -> tuple[float, float, float] | None:
    return None if not value else (value["value"], value["low"], value["high"])
