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

from autotune.confirm import CONFIRMATION_ATTR, DEFAULT_REPEATS, Confirmation, Run, confirm, paired_speedup
from autotune.contract import Objective
from autotune.errors import UserError
from autotune.intervals import percent
from autotune.measurer import Measurer

VERIFICATION_ATTR = "verification"
# How far the winner's throughput, or the upper end of its speedup interval, may fall below the stored
# figure (the lower end of the stored interval) before it counts as a regression: run-to-run spread of
# whole processes on a quiet host stays within a few percent. Running faster than stored still holds.
# With both intervals at 93.75% (5 rounds each), a true speedup below both ends is rare by chance.
REGRESSION_TOLERANCE = 0.10
DEFAULT_VERIFY_ROUNDS = DEFAULT_REPEATS


@dataclass(frozen=True)
class Verdict:
    """The comparison of a verification with the stored confirmation.

    Attributes:
        holds: Whether the stored result still holds.
        stored_rate: The winner's confirmed figure of the objective as stored.
        rate: The winner's figure now.
        stored_speedup: Stored paired speedup over the baseline, ``(value, low, high)``.
        speedup: Paired speedup now, ``(value, low, high)``.
        reasons: Why it does not hold (empty when it holds).
        stored_level: Achieved level of the stored interval, with ``stored_rounds`` rounds.
        level: Achieved level of the interval now, with ``rounds`` rounds.
    """

    holds: bool
    stored_rate: float
    rate: float | None
    stored_speedup: tuple[float, float, float] | None
    speedup: tuple[float, float, float] | None
    reasons: tuple[str, ...]
    stored_level: float | None = None
    level: float | None = None
    stored_rounds: int = 0
    rounds: int = 0


def stored_confirmation(study: optuna.Study, objective: Objective) -> Confirmation:
    """The study's confirmation stage.

    Raises:
        UserError: The study has none (it ran with --confirm-repeats 0, or never finished a run).
    """
    data = study.user_attrs.get(CONFIRMATION_ATTR)
    if not data:
        raise UserError(f"study {study.study_name!r} has no confirmation stage to verify; "
                        "run `autotune run` with --confirm-repeats > 0 first")
    try:
        confirmation = Confirmation.from_dict(data, objective)
    except (KeyError, TypeError):
        raise UserError(f"study {study.study_name!r} holds an unreadable confirmation") from None
    if confirmation.winner is None or confirmation.winner not in confirmation.rates:
        raise UserError(f"study {study.study_name!r}: its confirmation stage measured nothing successfully")
    return confirmation


def verify(
    study: optuna.Study,
    measurer: Measurer,
    *,
    repeats: int = DEFAULT_VERIFY_ROUNDS,
    on_run: Callable[[Run], None] | None = None,
) -> Verdict:
    """Re-measure the stored winner against the references, holding the cores, and judge the stored result."""
    objective = measurer.space.objective
    stored = stored_confirmation(study, objective)
    wanted = [stored.winner, "vendor_recommended", "baseline"]
    candidates = [c for label in dict.fromkeys(wanted) if (c := stored.candidate(label)) is not None]
    with measurer.holding(f"verify {study.study_name}"):
        now = confirm(study, candidates, measurer, repeats=repeats, select_rounds=0, on_run=on_run,
                      attr=VERIFICATION_ATTR)
    return judge(stored, now, objective)


def judge(stored: Confirmation, now: Confirmation, objective: Objective) -> Verdict:
    """Compare a new confirmation of the stored winner with the stored one (either direction of objective)."""
    winner = stored.winner
    stored_rate = stored.rates[winner]
    rate = now.rates.get(winner)
    reasons = []
    if rate is None:
        reasons.append(f"{winner} did not run successfully now")
    elif objective.speedup(rate, stored_rate) < 1 - REGRESSION_TOLERANCE:
        reasons.append(f"{winner} now reaches {objective.speedup(rate, stored_rate):.0%} of its stored "
                       f"{objective.name}")
    stored_paired = stored.speedups.get("vs_baseline")
    paired = paired_speedup(now.runs, winner, "baseline", objective)
    old, new = _triple(stored_paired), _triple(paired)
    if old and new and new[2] < (1 - REGRESSION_TOLERANCE) * old[1]:
        reasons.append(
            f"speedup over baseline is {speedup_text(paired)}, below the stored {speedup_text(stored_paired)}"
        )
    return Verdict(holds=not reasons, stored_rate=stored_rate, rate=rate, stored_speedup=old,
                   speedup=new, reasons=tuple(reasons),
                   stored_level=stored_paired["level"] if stored_paired else None,
                   level=paired["level"] if paired else None,
                   stored_rounds=stored_paired["rounds"] if stored_paired else 0,
                   rounds=paired["rounds"] if paired else 0)


def speedup_text(paired: Mapping[str, Any]) -> str:
    """E.g. ``14.98x (13.44-15.74, 93.8% interval, 5 rounds)``."""
    return (f"{paired['value']:.2f}x ({paired['low']:.2f}-{paired['high']:.2f}, "
            f"{percent(paired['level'])} interval, {paired['rounds']} rounds)")


def _triple(value: Mapping[str, float] | None) -> tuple[float, float, float] | None:
    return None if not value else (value["value"], value["low"], value["high"])
