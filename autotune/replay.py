"""Replay a search against a recorded landscape, paying what the real search would pay.

Life cycle: :func:`replay` builds an Optuna study with a sampler and autotune's pruner, enqueues the
baseline and the vendor reference (as ``autotune run`` does) and any warm-start configurations, then
runs the same ask -> measure -> tell loop as :class:`autotune.study.loop.SearchLoop`, with every
measurement answered from the landscape file:

- a measurement draws one of the configuration's recorded repeats (seeded), so noise is replayed too;
- it costs the recorded process: start-up, warm-up and timed steps (the repeat's wall time);
- a search trial still warming up is pruned where :func:`autotune.pruning.warmup_too_slow` would prune it,
  and then costs its set-up plus the warm-up it waited;
- after each timed step its running figure is reported to :class:`autotune.pruning.BestFractionPruner`;
  a pruned trial costs only the steps that ran;
- a timed step that runs so long that the trial's figure is already clearly worse than the best, whatever
  its end, is stopped at that moment (:func:`running_limit`, with the driver's poll and slack), as the
  driver stops it while it runs;
- a configuration already measured is answered from storage and costs nothing, as in the real loop.

The references are never pruned, as in the real loop. Warm starts (:mod:`autotune.study.warm`):
``first`` lists configurations measured first, each measured fresh (:func:`top_params` takes them from
another landscape), and ``prior`` the source's known-bad configurations, handed to the sampler as PRUNED
trials that cost nothing and count nowhere (:func:`bad_params`).
"""

from __future__ import annotations

import functools
import random
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from autotune.feasible import PRIOR_ROLE
from autotune.landscape import Landscape, Measurement
from autotune.pruning import (
    WARMUP_FACTOR,
    WARMUP_MIN_SECONDS,
    BestFractionPruner,
    best_step_seconds,
    warmup_too_slow,
)
from autotune.runner import POLL_SECONDS, RUNNING_SLACK_SECONDS
from autotune.space import REFERENCES
from autotune.study.warm import prior_trial

# The real loop's stop after this many repeats in a row (autotune.study.loop.MAX_CONSECUTIVE_REPEATS).
MAX_CONSECUTIVE_REPEATS = 25
# Target kinds: the noise-aware target and 95% of the best median (autotune.landscape.Landscape.targets).
TARGETS = ("noise", "fraction")


@dataclass
class Run:
    """What one replayed search spent.

    Attributes:
        trials: Configurations measured until each target kind was reached (None: never reached).
        seconds: Seconds of trials spent until each target kind was reached (None: never reached).
        measured: Configurations measured in all.
        spent_s: Seconds of trials in all.
        wasted_s: Seconds spent on trials that ended pruned or failed.
        history: (configuration id, outcome) of each measurement, in order.
    """

    trials: dict[str, int | None] = field(default_factory=dict)
    seconds: dict[str, float | None] = field(default_factory=dict)
    measured: int = 0
    spent_s: float = 0.0
    wasted_s: float = 0.0
    history: list[tuple[int, str]] = field(default_factory=list)


def suggest(trial: optuna.Trial, knobs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Suggest the landscape's knobs in order, as :meth:`autotune.space.SearchSpace.suggest` does."""
    params: dict[str, Any] = {}
    for knob in knobs:
        if not all(params.get(other) in values for other, values in knob["when"].items()):
            continue
        if knob["kind"] == "int":
            params[knob["name"]] = trial.suggest_int(knob["name"], knob["low"], knob["high"])
        else:
            params[knob["name"]] = trial.suggest_categorical(knob["name"], list(knob["choices"]))
    return params


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def _allowed(knob: Mapping[str, Any], value: Any) -> bool:
    if knob["kind"] == "int":
        return isinstance(value, int) and knob["low"] <= value <= knob["high"]
    return value in knob["choices"]


def in_space(landscape: Landscape, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` restricted to the landscape's knobs and their values (what can be enqueued)."""
    knobs = {k["name"]: k for k in landscape.knobs}
    return {n: v for n, v in params.items() if n in knobs and _allowed(knobs[n], v)}


def top_params(landscape: Landscape, n: int) -> list[dict[str, Any]]:
    """The ``n`` best configurations' searched knobs, by median: a warm start from this landscape."""
    stats = {cid: s.median for cid, s in landscape.stats().items() if s.median is not None}
    order = sorted(stats, key=lambda c: stats[c], reverse=landscape.maximize)
    return [dict(landscape.configs[cid]["params"]) for cid in order[:n]]


def bad_params(landscape: Landscape, fraction: float = BestFractionPruner().fraction) -> list[dict[str, Any]]:
    """Configurations a search on this landscape ends pruned or failed: a median below ``fraction`` of the
    best median (above best / ``fraction`` when minimizing), or no successful measurement."""
    stats = landscape.stats()
    _, best = landscape.best()
    bad = []
    for entry in landscape.configs:
        if entry["roles"]:
            continue
        median = stats[entry["id"]].median if entry["id"] in stats else None
        if median is None or (median < fraction * best.median if landscape.maximize
                              else median > best.median / fraction):
            bad.append(dict(entry["params"]))
    return bad


def replay(
    landscape: Landscape,
    sampler: optuna.samplers.BaseSampler,
    seed: int,
    *,
    references: bool = True,
    prune: bool = True,
    first: Sequence[Mapping[str, Any]] = (),
    prior: Sequence[Mapping[str, Any]] = (),
    limit: int | None = None,
    until_target: bool = True,
) -> Run:
    """Replay one search (see the module docstring).

    Args:
        landscape: The recorded grid.
        sampler: A fresh Optuna sampler (it keeps state).
        seed: Seeds which recorded repeat answers each measurement.
        references: Measure the baseline and the vendor-recommended configuration first.
        prune: Prune as ``autotune run`` does (warm-up and step pruning); False measures every trial in full.
        first: Configurations (searched knobs) measured after the references and before the sampler's own.
        prior: Known-bad configurations (searched knobs) given to the sampler as PRUNED trials, not measured.
        limit: Stop after this many configurations measured (default: the grid's size).
        until_target: Stop once both targets are reached; False runs on to ``limit`` (or until the
            sampler only repeats itself).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    by_config = landscape.by_config()
    by_params: dict[tuple, int] = {}
    for entry in landscape.configs:
        if by_config.get(entry["id"]):
            by_params.setdefault(_key(entry["params"]), entry["id"])
    by_role = {role: entry["id"] for entry in landscape.configs if by_config.get(entry["id"])
               for role in entry["roles"]}
    targets = {kind: landscape.targets(kind) for kind in TARGETS}
    limit = limit or len(landscape.configs)
    study = optuna.create_study(direction="maximize" if landscape.maximize else "minimize", sampler=sampler,
                                pruner=BestFractionPruner() if prune else optuna.pruners.NopPruner())
    if references:
        for role in REFERENCES:
            if role in by_role:
                params = in_space(landscape, landscape.configs[by_role[role]]["params"])
                study.enqueue_trial(params, user_attrs={"role": role})
    for params in first:
        study.enqueue_trial(in_space(landscape, params), skip_if_exists=True)
    for params in prior:
        study.add_trial(prior_trial(lambda t: suggest(t, landscape.knobs), in_space(landscape, params),
                                    study.direction, {"role": PRIOR_ROLE}))
    rng = random.Random(seed)
    run = Run(trials=dict.fromkeys(TARGETS), seconds=dict.fromkeys(TARGETS))
    seen: dict[int, optuna.trial.FrozenTrial] = {}
    repeats = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature and independent-sampling notes
        while run.measured < limit and repeats < MAX_CONSECUTIVE_REPEATS:
            trial = study.ask()
            params = suggest(trial, landscape.knobs)
            role = trial.user_attrs.get("role")
            cid = by_role[role] if role in by_role else by_params.get(_key(params))
            if cid is None:  # not recorded (a failed recording): as a failed trial that cost nothing
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                repeats += 1
                continue
            if role is None and cid in seen:
                _answer_repeat(study, trial, seen[cid])
                repeats += 1
                continue
            repeats = 0
            measurement = rng.choice(by_config[cid])
            state, cost = _measure(study, trial, measurement, prune and role is None, landscape.maximize)
            run.measured += 1
            run.spent_s += cost
            if state != optuna.trial.TrialState.COMPLETE:
                run.wasted_s += cost
            run.history.append((cid, state.name.lower()))
            seen[cid] = study.get_trials(deepcopy=False)[trial.number]
            for kind in TARGETS:
                if run.trials[kind] is None and state == optuna.trial.TrialState.COMPLETE and cid in targets[kind]:
                    run.trials[kind], run.seconds[kind] = run.measured, run.spent_s
            if until_target and all(run.trials[kind] is not None for kind in TARGETS):
                break
    return run


def _answer_repeat(study: optuna.Study, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> None:
    if earlier.state == optuna.trial.TrialState.COMPLETE:
        study.tell(trial, earlier.value)
    else:
        study.tell(trial, state=earlier.state)


def _measure(
    study: optuna.Study, trial: optuna.Trial, m: Measurement, prune: bool, maximize: bool
) -> tuple[optuna.trial.TrialState, float]:
    """Tell the trial what ``m`` measured, pruned where autotune would prune; return its state and cost."""
    if prune and m.work_per_step > 0 and m.warmup_seconds:
        best = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        best_value = (max if maximize else min)(best) if best else None
        best_step = best_step_seconds(m.work_per_step, best_value, maximize)
        waited = sum(m.warmup_seconds)
        if warmup_too_slow(waited, best_step):
            # The driver polls the wait; it gives up at the first moment the rule says so.
            give_up = _warmup_limit(best_step)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return optuna.trial.TrialState.PRUNED, m.setup_seconds + give_up
    steps = m.step_seconds
    pruner = study.pruner if isinstance(study.pruner, BestFractionPruner) else None
    for k in range(1, len(steps) + 1):
        if not m.work_per_step:
            break
        if prune and pruner is not None and k >= pruner.n_warmup_steps:
            cut = running_limit(list(steps[:k]), functools.partial(
                _beaten_at, pruner, pruner.best(study), m.work_per_step, maximize))
            if cut is not None:
                median = statistics.median([*steps[:k - 1], cut - RUNNING_SLACK_SECONDS])
                trial.report(m.work_per_step / median if maximize else median / m.work_per_step, k - 1)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return optuna.trial.TrialState.PRUNED, m.wall_seconds - sum(steps[k - 1:]) + cut
        median = statistics.median(steps[:k])
        trial.report(m.work_per_step / median if maximize else median / m.work_per_step, k - 1)
        if trial.should_prune():  # the driver asks after every step, the last one too
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return optuna.trial.TrialState.PRUNED, m.wall_seconds - sum(steps[k:])
    if not m.ok:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return optuna.trial.TrialState.FAIL, m.wall_seconds
    study.tell(trial, m.value)
    return optuna.trial.TrialState.COMPLETE, m.wall_seconds


def _beaten_at(pruner: BestFractionPruner, best: float | None, work: float, maximize: bool, step_s: float) -> bool:
    return pruner.beaten(work / step_s if maximize else step_s / work, best, maximize)


def running_limit(steps: list[float], beaten: Callable[[float], bool], poll_s: float = POLL_SECONDS,
                  slack_s: float = RUNNING_SLACK_SECONDS) -> float | None:
    """When the driver stops the last of ``steps`` while it runs (seconds into it), or None if it ends first.

    The driver looks every ``poll_s`` seconds; ``t`` seconds into the step it takes ``t - slack_s`` as a
    lower bound of the step's time and judges the median of the earlier steps and that bound
    (``beaten`` of that median step time says whether that is clearly too slow). The median only grows
    with the bound, so the first such poll is found by bisection.
    """
    *done, last = steps

    def too_slow(bound: float) -> bool:
        return beaten(statistics.median([*done, bound]))

    polls = int((last - slack_s) // poll_s)  # the bounds k * poll_s seen while the step still runs
    if polls < 1 or not too_slow(polls * poll_s):
        return None
    low, high = 0, polls  # too_slow(high * poll_s); find the first poll that is
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if too_slow(middle * poll_s) else (middle, high)
    return high * poll_s + slack_s


def _warmup_limit(best_step: float | None) -> float:
    """The wait after which :func:`warmup_too_slow` first says yes."""
    return max(WARMUP_MIN_SECONDS, WARMUP_FACTOR * (best_step or 0.0))

