"""The confirmation stage: choose the winner on some rounds, measure its speedup on others.

The single fastest search trial is often luck on a noisy machine, and picking the best of a few
near-tied finalists and then measuring its speedup on the same runs biases the speedup upward. So the
stage has two parts, each of fresh processes run back to back in rounds:

1. **Selection rounds** (``select_rounds``, default 1): the top few distinct search configurations
   (the finalists) alone, ``A B C, A B C, ...``. The winner is the finalist with the best median
   figure (the workload's objective, either direction) over these rounds. With one finalist (or
   ``select_rounds`` 0) the search chose it.
2. **Estimation rounds** (``repeats``, default 5): the winner, the vendor-recommended config and the
   baseline, ``W V base, W V base, ...``. Each speedup is the median over these rounds of the paired
   ratio (how many times better the winner is than the reference in the same round: winner / reference
   for a throughput, reference / winner for a latency; a drift of the machine common to a round
   cancels), with the distribution-free order-statistic interval of that median
   (:func:`autotune.intervals.median_interval`) and the level it achieves: 5 rounds give 93.75%.
   Only these rounds enter the estimate; the selection rounds and the search never do.

What is estimated: the median, over rounds on this host, of the paired ratio. Rounds are
the unit of replication because the spread between processes (5-9% between rounds for the finalists
on the development host) dominates the spread of steps inside one (CVs of 1-5%). For the same reason a
confirmation run times fewer steps than a search trial: about :data:`CONFIRM_TIMED_SECONDS` of timed
steps (at least one, never more than its search trial ran). One 16 s step of the 128^3 baseline then
replaces three, and the time saved pays for the extra rounds.

The stage's runs are stored in the study's user attribute ``confirmation`` after every run, so an
interruption loses nothing measured. A confirmation stored by an older autotune (every round ran every
candidate, and the same rounds chose the winner and measured its speedup) is read as such: its
interval is recomputed by the order-statistic method (3 rounds: 75%) and marked as chosen on the same
runs.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from autotune.contract import Objective
from autotune.errors import UserError
from autotune.feasible import is_feasible
from autotune.intervals import METHOD_TEXT, median_interval
from autotune.protocol import Outcome
from autotune.runner import TrialOutcome
from autotune.space import SearchSpace

if TYPE_CHECKING:
    from autotune.measurer import Measurer

CONFIRMATION_ATTR = "confirmation"
DEFAULT_TOP = 3
DEFAULT_SELECT_ROUNDS = 1
# Five estimation rounds: the order-statistic interval [min, max] of 5 paired ratios covers their
# median with probability 1 - 2 * 0.5**5 = 93.75%; 3 rounds would give 75%, 4 rounds 87.5%.
DEFAULT_REPEATS = 5
REFERENCE_LABELS = ("vendor_recommended", "throughput_rule", "mlperf_rule", "baseline")
RULE_LABELS = ("throughput_rule", "mlperf_rule")

SELECT = "select"
ESTIMATE = "estimate"
# How the winner was chosen (Confirmation.chosen_by).
BY_SELECTION = "selection rounds"
BY_SEARCH = "search"
BY_SAME_RUNS = "same runs"  # confirmations stored before schema 2: biased upward, said so

# Timed seconds of one confirmation run. Between-process spread (5-9%) dominates within-process
# spread (step CVs 1-5%) on the development host, so a run's median over a few steps is as good as
# over many: sqrt(0.07**2 + 0.02**2) = 7.3% against 7.0% with a perfectly timed run.
CONFIRM_TIMED_SECONDS = 3.0
# A search trial that timed fewer steps than this is re-run as it ran (nothing to shorten).
MIN_STEPS_TO_SHORTEN = 3


@dataclass(frozen=True)
class Candidate:
    """A configuration to re-measure.

    Attributes:
        label: ``baseline``, ``vendor_recommended`` or ``trial N``.
        trial: The search trial it comes from.
        config: Its complete configuration.
        timed_steps: Timed steps of a confirmation run (see :data:`CONFIRM_TIMED_SECONDS`), sent as the
            driver's order :attr:`autotune.protocol.TrialConfig.timed_steps`; None runs it as its
            search trial ran.
        finalist: Whether the winner is chosen among it (the references are measured either way).
        instances: How many instances the configuration runs (1 for one process).
        alternative: The best configuration of the other layout kind (one instance / several) than the
            search's best, measured beside the winner when the winner is of the other kind.
    """

    label: str
    trial: int
    config: Mapping[str, Any]
    timed_steps: int | None = None
    finalist: bool = False
    instances: int = 1
    alternative: bool = False


@dataclass(frozen=True)
class Run:
    """One re-measurement of one candidate in one round of a stage (:data:`SELECT` or :data:`ESTIMATE`).

    Attributes:
        value: The objective's figure of the run (None when it failed).
    """

    label: str
    round: int
    outcome: str
    value: float | None = None
    median_step_s: float | None = None
    cv: float | None = None
    step_seconds: list[float] = field(default_factory=list)
    stage: str = ESTIMATE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], objective: Objective) -> Run:
        """A stored run; runs stored before the workload contract keep the value under the objective's name."""
        known = {f for f in cls.__dataclass_fields__ if f != "value"}
        value = data.get("value", data.get(objective.name))
        return cls(value=value, **{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Confirmation:
    """What the confirmation stage found.

    Attributes:
        candidates: What was re-measured, in run order (finalists, then the references).
        runs: Every run, in order.
        winner: Label of the chosen finalist (None until chosen, or when none ran successfully).
        rates: Median figure of the objective over the estimation rounds, per label.
        speedups: ``vs_baseline`` and ``vs_vendor``: see :func:`paired_speedup`.
        selection: Median figure over the selection rounds, per finalist.
        chosen_by: How the winner was chosen: :data:`BY_SELECTION`, :data:`BY_SEARCH`, or
            :data:`BY_SAME_RUNS` (an older study: the estimation rounds themselves).
    """

    candidates: list[Candidate]
    runs: list[Run]
    winner: str | None
    rates: dict[str, float]
    speedups: dict[str, dict[str, Any] | None]
    selection: dict[str, float] = field(default_factory=dict)
    chosen_by: str = BY_SELECTION
    objective: Objective | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (stored in the study)."""
        return {**asdict(self), "objective": None if self.objective is None else asdict(self.objective)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], objective: Objective) -> Confirmation:
        """Inverse of :meth:`to_dict`; reads older confirmations too (see the module docstring).

        The figures are recomputed from the runs, so an older study gets today's intervals.
        """
        candidates = [Candidate(**c) for c in data["candidates"]]
        runs = [Run.from_dict(r, objective) for r in data["runs"]]
        return decide(candidates, runs, data["winner"], data.get("chosen_by", BY_SAME_RUNS), objective)

    def candidate(self, label: str) -> Candidate | None:
        """The candidate called ``label``."""
        return next((c for c in self.candidates if c.label == label), None)

    @property
    def rounds(self) -> int:
        """Estimation rounds run."""
        return len({r.round for r in self.runs if r.stage == ESTIMATE})

    @property
    def selection_rounds(self) -> int:
        """Selection rounds run."""
        return len({r.round for r in self.runs if r.stage == SELECT})


def candidates_of(study: optuna.Study, space: SearchSpace, top: int) -> list[Candidate]:
    """The finalists, then the references that are not among them.

    The finalists are the best ``top`` distinct completed configurations of the whole study, the
    vendor-recommended one included: where it beats every search trial (a small host, a model the
    vendor's rule suits), it is the winner to confirm, not a reference the "best" falls short of. A
    search trial that found a reference's configuration again counts as that reference. Only feasible
    trials are finalists (:mod:`autotune.feasible`): an inaccurate vendor configuration is measured as a
    reference, never confirmed as the winner. Where the study measured both one instance and several, the
    best of each kind is marked ``alternative`` (the best of the kind the finalists lack comes last).
    """
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "repeat_of" not in t.user_attrs and t.user_attrs.get("config")
    ]
    references: dict[tuple, tuple[str, optuna.trial.FrozenTrial]] = {}
    for role in REFERENCE_LABELS:
        for trial in trials:
            if trial.user_attrs.get("role") == role:
                references[space.fingerprint_config(space.configure(trial.user_attrs["config"]))] = (role, trial)
                break
    finalists: list[Candidate] = []
    kinds: dict[bool, Candidate] = {}
    seen = set()
    for trial in sorted(trials, key=lambda t: t.value, reverse=space.objective.maximize):
        key = space.fingerprint_config(space.configure(trial.user_attrs["config"]))
        if key in seen or not is_feasible(trial):
            continue
        seen.add(key)
        label, source = references.get(key, (f"trial {trial.number}", trial))
        if label == "baseline":
            continue  # the reference every speedup is over
        candidate = _candidate(label, source, space)
        kinds.setdefault(candidate.instances > 1, candidate)
        if len(finalists) < top:
            finalists.append(dataclasses.replace(candidate, finalist=True))
    chosen = {c.label for c in finalists}
    rest = [_candidate(role, trial, space) for role, trial in references.values() if role not in chosen]
    order = {role: n for n, role in enumerate(REFERENCE_LABELS)}
    listed = finalists + sorted(rest, key=lambda c: order[c.label])
    best_of_kind = {c.label for c in kinds.values()} if len(kinds) == 2 else set()
    listed += [c for c in kinds.values() if c.label in best_of_kind and c.label not in {x.label for x in listed}]
    return [dataclasses.replace(c, alternative=c.label in best_of_kind) for c in listed]


def _candidate(label: str, trial: optuna.trial.FrozenTrial, space: SearchSpace) -> Candidate:
    config = trial.user_attrs["config"]
    try:
        instances = space.instances(space.configure(config))[0]
    except UserError:
        instances = 1
    return Candidate(label, trial.number, config, timed_steps(trial.user_attrs), instances=instances)


def timed_steps(record: Mapping[str, Any]) -> int | None:
    """Timed steps of a confirmation run of a configuration whose search trial is ``record``.

    About :data:`CONFIRM_TIMED_SECONDS` at the trial's median step time, at least one and never more
    than the trial ran; None (run as in the search) when the trial ran fewer than three (an exact small
    count the user asked for, or a workload that times few long steps).
    """
    ran, step = len(record.get("step_seconds") or ()), record.get("median_step_s")
    if ran < MIN_STEPS_TO_SHORTEN:
        return None
    if not ran or not step or step <= 0:
        return None
    return max(1, min(ran, math.ceil(CONFIRM_TIMED_SECONDS / step)))


def finalists_of(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates the winner is chosen from (confirmations stored before finalists were marked: the
    search's candidates, or the references when it had none)."""
    marked = [c for c in candidates if c.finalist]
    if marked:
        return marked
    found = [c for c in candidates if c.label not in REFERENCE_LABELS and not c.alternative]
    return found or [c for c in candidates if c.label in REFERENCE_LABELS]


def run_seconds(record: Mapping[str, Any], steps: int | None) -> float:
    """Wall time of one confirmation run of the trial ``record``, running ``steps`` timed steps."""
    wall = float(record.get("wall_seconds") or 0.0)
    ran = len(record.get("step_seconds") or ())
    if steps is None or steps >= ran:
        return wall
    return max(0.0, wall - (ran - steps) * float(record.get("median_step_s") or 0.0))


def estimate_seconds(
    study: optuna.Study, space: SearchSpace, top: int, repeats: int,
    select_rounds: int = DEFAULT_SELECT_ROUNDS,
) -> float:
    """Wall time the confirmation stage will take, from the candidates' own trial times.

    Selection rounds run every finalist; estimation rounds run the winner (not known yet: the slowest
    finalist is assumed) and the references. Each run is its search trial's wall time less the timed
    steps it leaves out (:func:`timed_steps`).
    """
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    candidates = candidates_of(study, space, top)
    cost = {c.label: run_seconds(by_number[c.trial].user_attrs, c.timed_steps) for c in candidates}
    finalists = finalists_of(candidates)
    if not finalists:
        return 0.0
    select = select_rounds * sum(cost[c.label] for c in finalists) if len(finalists) > 1 else 0.0
    winner = max(finalists, key=lambda c: cost[c.label])
    references = [c for c in candidates if (c.label in REFERENCE_LABELS or (c.alternative and not c.finalist))
                  and c.label != winner.label]
    return select + repeats * (cost[winner.label] + sum(cost[c.label] for c in references))


def rerun_seconds(study: optuna.Study, space: SearchSpace, top: int) -> float:
    """Wall time of running the top ``top`` candidates and the references once, as their trials ran."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    return sum(float(by_number[c.trial].user_attrs.get("wall_seconds") or 0.0)
               for c in candidates_of(study, space, top))


def confirm(
    study: optuna.Study,
    candidates: list[Candidate],
    measurer: Measurer,
    *,
    repeats: int = DEFAULT_REPEATS,
    select_rounds: int = DEFAULT_SELECT_ROUNDS,
    on_run: Callable[[Run], None] | None = None,
    attr: str = CONFIRMATION_ATTR,
) -> Confirmation:
    """Choose the winner in selection rounds, then measure it against the references.

    The caller holds the cores (:meth:`autotune.measurer.Measurer.holding`) for the whole stage.

    Args:
        study: Where the stage's runs are stored (user attribute ``attr``).
        candidates: Finalists, then the references (as :func:`candidates_of` returns them).
        measurer: Measures a configuration (its space gives the objective).
        repeats: Estimation rounds (winner, vendor, baseline).
        select_rounds: Selection rounds (finalists only); none when there is one finalist.
        on_run: Called after every run (progress).
        attr: Study user attribute the result is stored under.
    """
    objective = measurer.space.objective
    runs: list[Run] = []
    finalists = finalists_of(candidates)

    def measure(candidate: Candidate, stage: str, round_: int, winner: str | None, chosen_by: str) -> None:
        _, outcome = measurer.run(candidate.config, timed_steps=candidate.timed_steps)
        run = _run(candidate.label, round_, outcome, stage, objective)
        runs.append(run)
        study.set_user_attr(attr, decide(candidates, runs, winner, chosen_by, objective).to_dict())
        if on_run is not None:
            on_run(run)

    if len(finalists) > 1 and select_rounds > 0:
        for round_ in range(select_rounds):
            for candidate in finalists:
                measure(candidate, SELECT, round_, None, BY_SELECTION)
        winner, chosen_by = select_winner(finalists, runs, objective), BY_SELECTION
    else:
        winner, chosen_by = (finalists[0].label if finalists else None), BY_SEARCH
    result = decide(candidates, runs, winner, chosen_by, objective)
    study.set_user_attr(attr, result.to_dict())
    if winner is None:
        return result
    estimated = [c for c in candidates if c.label == winner]
    estimated += [c for c in candidates if c.label in REFERENCE_LABELS and c.label != winner]
    if (other := layout_alternative(candidates, winner)) is not None and other not in estimated:
        estimated.append(other)
    for round_ in range(repeats):
        for candidate in estimated:
            measure(candidate, ESTIMATE, round_, winner, chosen_by)
    return decide(candidates, runs, winner, chosen_by, objective)


def _run(label: str, round_: int, outcome: TrialOutcome, stage: str, objective: Objective) -> Run:
    result = outcome.result
    value = None if result is None else result.figures.get(objective.name)
    if outcome.outcome is not Outcome.OK or result is None or value is None:
        failed = outcome.outcome.value if outcome.outcome is not Outcome.OK else Outcome.BAD_OUTPUT.value
        return Run(label, round_, failed, stage=stage)
    return Run(label, round_, Outcome.OK.value, value, result.median_step_s, result.cv,
               list(result.step_seconds), stage)


def select_winner(finalists: list[Candidate], runs: list[Run], objective: Objective) -> str | None:
    """The finalist with the best median figure over the selection rounds (None if none ran)."""
    return objective.best(_medians(finalists, runs, SELECT))


def _medians(candidates: list[Candidate], runs: list[Run], stage: str) -> dict[str, float]:
    rates: dict[str, float] = {}
    for candidate in candidates:
        values = [r.value for r in runs if r.label == candidate.label and r.stage == stage and r.value]
        if values:
            rates[candidate.label] = statistics.median(values)
    return rates


def decide(
    candidates: list[Candidate], runs: list[Run], winner: str | None, chosen_by: str, objective: Objective
) -> Confirmation:
    """The figures of the runs so far: medians per stage and the winner's paired speedups."""
    speedups = {
        "vs_baseline": paired_speedup(runs, winner, "baseline", objective),
        "vs_vendor": paired_speedup(runs, winner, "vendor_recommended", objective),
    }
    rates = _medians(candidates, runs, ESTIMATE)
    rule = objective.best({label: rates[label] for label in RULE_LABELS if label in rates and label != winner})
    if rule is not None:
        speedups["vs_rule"] = paired_speedup(runs, winner, rule, objective)
    other = layout_alternative(candidates, winner)
    if other is not None:
        speedups["vs_layout"] = paired_speedup(runs, winner, other.label, objective)
    return Confirmation(candidates=list(candidates), runs=list(runs), winner=winner,
                        rates=_medians(candidates, runs, ESTIMATE), speedups=speedups,
                        selection=_medians(candidates, runs, SELECT), chosen_by=chosen_by, objective=objective)


def layout_alternative(candidates: list[Candidate], winner: str | None) -> Candidate | None:
    """The best configuration of the other layout kind than the winner's (several instances against one),
    when the study measured both kinds (:func:`candidates_of` marks the best of each ``alternative``)."""
    chosen = next((c for c in candidates if c.label == winner), None)
    if chosen is None:
        return None
    several = chosen.instances > 1
    return next((c for c in candidates if c.alternative and (c.instances > 1) != several), None)


def paired_speedup(runs: list[Run], label: str | None, reference: str, objective: Objective) -> dict[str, Any] | None:
    """Median over the estimation rounds of how many times better ``label`` is than ``reference`` per round.

    Returns:
        ``value``, the interval ``low`` and ``high``, its ``level`` (achieved for this many rounds),
        ``method``, ``rounds`` (how many rounds measured both), ``round_numbers`` (which, from 1) and
        ``labels`` (``[label, reference]``); None when no round measured both (or ``label`` is the
        reference itself).
    """
    if label is None or label == reference:
        return None
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        if run.value and run.stage == ESTIMATE:
            by_round.setdefault(run.round, {})[run.label] = run.value
    used = sorted(n for n, r in by_round.items() if label in r and reference in r)
    if not used:
        return None
    ratios = [objective.speedup(by_round[n][label], by_round[n][reference]) for n in used]
    interval = median_interval(ratios)
    return {"value": statistics.median(ratios), "low": interval.low, "high": interval.high,
            "level": interval.level, "method": interval.method, "rounds": len(ratios),
            "round_numbers": [n + 1 for n in used], "labels": [label, reference]}


def describe(confirmation: Confirmation, speedup: Mapping[str, Any]) -> str:
    """Which runs a paired speedup used and how its winner was chosen, in words."""
    rounds = speedup["rounds"]
    what = (f"median of paired ratios over {rounds} interleaved confirmation round{'s' * (rounds != 1)}, "
            f"{METHOD_TEXT[speedup['method']]}")
    if confirmation.chosen_by == BY_SELECTION:
        chosen = (f"winner chosen in {confirmation.selection_rounds} separate selection "
                  f"round{'s' * (confirmation.selection_rounds != 1)}, not used in the estimate")
    elif confirmation.chosen_by == BY_SEARCH:
        chosen = "winner chosen by the search, not by these rounds"
    else:
        chosen = ("stored by an older autotune: the same rounds chose the winner, "
                  "which biases this speedup upward")
    return f"{what}; {chosen}"
