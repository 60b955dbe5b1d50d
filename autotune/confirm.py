"""The confirmation stage: re-measure the top candidates and the references, interleaved.

The single fastest search trial is often luck on a noisy machine. After the search, the top few
distinct configurations, the vendor-recommended config and the baseline are each re-measured in fresh
processes, round after round in the same order (A B C V base, A B C V base, ...), so slow drifts of the
machine hit every candidate alike. The winner is the candidate with the highest median throughput over
the rounds; its speedup over the baseline is the median of the per-round (paired) ratios, with a 95%
percentile-bootstrap interval over those ratios. The stage's runs are stored in the study's user
attribute ``confirmation`` after every run, so an interruption loses nothing measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from autotune.measure import bootstrap_median_ci
from autotune.protocol import Outcome
from autotune.runner import TrialOutcome, TrialRunner, TrialSpec
from autotune.space import SearchSpace

CONFIRMATION_ATTR = "confirmation"
DEFAULT_TOP = 3
DEFAULT_REPEATS = 3
REFERENCE_LABELS = ("vendor_recommended", "baseline")


@dataclass(frozen=True)
class Candidate:
    """A configuration to re-measure.

    Attributes:
        label: ``baseline``, ``vendor_recommended`` or ``trial N``.
        trial: The search trial it comes from.
        config: Its complete configuration.
    """

    label: str
    trial: int
    config: Mapping[str, Any]


@dataclass(frozen=True)
class Run:
    """One re-measurement of one candidate in one round."""

    label: str
    round: int
    outcome: str
    voxels_per_s: float | None = None
    median_step_s: float | None = None
    cv: float | None = None
    step_seconds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Confirmation:
    """What the confirmation stage found.

    Attributes:
        candidates: What was re-measured, in run order.
        runs: Every run, in order.
        winner: Label of the candidate with the highest median throughput over the rounds.
        rates: Median voxels/s over the rounds, per label.
        speedups: ``vs_baseline`` and ``vs_vendor``: median paired ratio and its 95% interval.
    """

    candidates: list[Candidate]
    runs: list[Run]
    winner: str | None
    rates: dict[str, float]
    speedups: dict[str, dict[str, float] | None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (stored in the study)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Confirmation:
        """Inverse of :meth:`to_dict`."""
        return cls(
            candidates=[Candidate(**c) for c in data["candidates"]],
            runs=[Run(**r) for r in data["runs"]],
            winner=data["winner"],
            rates=dict(data["rates"]),
            speedups=dict(data["speedups"]),
        )

    def candidate(self, label: str) -> Candidate | None:
        """The candidate called ``label``."""
        return next((c for c in self.candidates if c.label == label), None)


def candidates_of(study: optuna.Study, space: SearchSpace, top: int) -> list[Candidate]:
    """The top ``top`` distinct completed configurations, then the vendor config and the baseline."""
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "repeat_of" not in t.user_attrs and t.user_attrs.get("config")
    ]
    chosen: list[Candidate] = []
    keys = set()
    for role in REFERENCE_LABELS:
        for trial in trials:
            if trial.user_attrs.get("role") == role:
                keys.add(space.fingerprint_config(space.configure(trial.user_attrs["config"])))
                chosen.append(Candidate(role, trial.number, trial.user_attrs["config"]))
                break
    ranked = []
    for trial in sorted(trials, key=lambda t: t.value, reverse=True):
        key = space.fingerprint_config(space.configure(trial.user_attrs["config"]))
        if key in keys:
            continue
        keys.add(key)
        ranked.append(Candidate(f"trial {trial.number}", trial.number, trial.user_attrs["config"]))
        if len(ranked) == top:
            break
    return ranked + chosen


def estimate_seconds(study: optuna.Study, space: SearchSpace, top: int, repeats: int) -> float:
    """Wall time the confirmation stage will take, from the candidates' own trial times."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    total = 0.0
    for candidate in candidates_of(study, space, top):
        total += float(by_number[candidate.trial].user_attrs.get("wall_seconds") or 0.0)
    return total * repeats


def confirm(
    study: optuna.Study,
    candidates: list[Candidate],
    make_spec: Callable[[Mapping[str, Any]], TrialSpec],
    *,
    repeats: int = DEFAULT_REPEATS,
    runner: TrialRunner | None = None,
    on_run: Callable[[Run], None] | None = None,
    attr: str = CONFIRMATION_ATTR,
) -> Confirmation:
    """Re-measure ``candidates`` for ``repeats`` interleaved rounds and decide.

    Args:
        study: Where the stage's runs are stored (user attribute ``attr``).
        candidates: What to re-measure, in the order of each round.
        make_spec: Builds the launch spec of a configuration.
        repeats: Rounds.
        runner: Runs the trials.
        on_run: Called after every run (progress).
        attr: Study user attribute the result is stored under.
    """
    runner = runner or TrialRunner()
    runs: list[Run] = []
    result = decide(candidates, runs)
    for round_ in range(repeats):
        for candidate in candidates:
            outcome = runner.run(make_spec(candidate.config))
            run = _run(candidate.label, round_, outcome)
            runs.append(run)
            result = decide(candidates, runs)
            study.set_user_attr(attr, result.to_dict())
            if on_run is not None:
                on_run(run)
    return result


def _run(label: str, round_: int, outcome: TrialOutcome) -> Run:
    result = outcome.result
    if outcome.outcome is not Outcome.OK or result is None:
        return Run(label, round_, outcome.outcome.value)
    return Run(label, round_, Outcome.OK.value, result.voxels_per_s, result.median_step_s, result.cv,
               list(result.step_seconds))


def decide(candidates: list[Candidate], runs: list[Run]) -> Confirmation:
    """The winner and the paired speedups from the runs so far."""
    rates: dict[str, float] = {}
    for candidate in candidates:
        values = [r.voxels_per_s for r in runs if r.label == candidate.label and r.voxels_per_s]
        if values:
            rates[candidate.label] = statistics.median(values)
    winner = max(rates, key=rates.get) if rates else None
    speedups = {
        "vs_baseline": paired_speedup(runs, winner, "baseline"),
        "vs_vendor": paired_speedup(runs, winner, "vendor_recommended"),
    }
    return Confirmation(candidates=list(candidates), runs=list(runs), winner=winner, rates=rates,
                        speedups=speedups)


def paired_speedup(runs: list[Run], label: str | None, reference: str) -> dict[str, float] | None:
    """Median of the per-round ratios ``label / reference`` with a 95% bootstrap interval.

    Returns None when no round measured both (or ``label`` is the reference itself).
    """
    if label is None or label == reference:
        return None
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        if run.voxels_per_s:
            by_round.setdefault(run.round, {})[run.label] = run.voxels_per_s
    ratios = [r[label] / r[reference] for r in by_round.values() if label in r and reference in r]
    if not ratios:
        return None
    low, high = bootstrap_median_ci(ratios)
    return {"value": statistics.median(ratios), "low": low, "high": high, "rounds": len(ratios)}
