"""What a study found, as data: the baseline / vendor / best summary and the ``best.json`` document.

:func:`summarize_study` reads everything from the Optuna study (the one source of truth), so a summary can
be rebuilt at any time from the storage alone; :mod:`autotune.report` renders it (the end table,
``report.md``, ``report.html``) and writes the files.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from autotune.agreement_report import SETUP_ATTR as AGREEMENT_ATTR
from autotune.calibrate import Calibration
from autotune.confirm import CONFIRMATION_ATTR, ESTIMATE, Confirmation, describe, paired_speedup
from autotune.contract import Objective
from autotune.errors import UserError
from autotune.feasible import PRIOR_ROLE, WARM_STARTS_ATTR, is_feasible
from autotune.host import HostInfo
from autotune.intervals import METHOD_TEXT, percent, ratio_of_medians_interval
from autotune.layout_report import layout_speedups
from autotune.profile import CONFIG_ROLES, StudyConfig
from autotune.record import FIGURES, figures_of
from autotune.space import SearchSpace

ROLES = ("baseline", "vendor_recommended", "best")


BEST_KIND = "autotune-best"


# Study user attribute holding the objective a study tuned (name, unit, direction).
OBJECTIVE_ATTR = "objective"


# best.json schema: 2 added each speedup's interval level, method and runs (additive: a schema-1
# reader finds every field it knew). Both are read.
BEST_SCHEMA = 2


READABLE_BEST_SCHEMAS = (1, 2)


PAIRED = "paired rounds"


WITHIN_PROCESS = "within one process each"


WITHIN_PROCESS_CAVEAT = "within one process each: says nothing about re-runs"


@dataclass(frozen=True)
class Speedup:
    """A throughput ratio, its interval and what the interval covers.

    Attributes:
        value: The ratio.
        low: Lower end of the interval.
        high: Upper end.
        level: The interval's achieved level (a lower bound when ``at_least``).
        method: :mod:`autotune.intervals` method name.
        scope: :data:`PAIRED` (confirmation rounds: covers re-runs on this host) or
            :data:`WITHIN_PROCESS` (one search trial each: covers nothing between processes).
        basis: Which runs it used, in words.
        runs: Which runs it used, as data (for ``best.json``).
        at_least: ``level`` is a lower bound.
    """

    value: float
    low: float
    high: float
    level: float | None = None
    method: str = ""
    scope: str = PAIRED
    basis: str = ""
    runs: Mapping[str, Any] = field(default_factory=dict)
    at_least: bool = False

    def interval_text(self) -> str:
        """E.g. ``93.8% interval`` or ``at least 56.2% interval within one process each: ...``."""
        level = "" if self.level is None else ("at least " if self.at_least else "") + percent(self.level) + " "
        if self.scope == WITHIN_PROCESS:
            return f"{level}interval {WITHIN_PROCESS_CAVEAT}"
        return f"{level}interval"

    def text(self) -> str:
        """E.g. ``5.31x (4.90-5.70, 93.8% interval)``."""
        return f"{self.value:.2f}x ({self.low:.2f}-{self.high:.2f}, {self.interval_text()})"


@dataclass(frozen=True)
class StudySummary:
    """The figures of one study, ready to print and write.

    Attributes:
        study: Study name.
        workload: Workload name.
        host: The host record of this run.
        configs: Records of the baseline, vendor-recommended and best trials (None if none ran OK).
        speedups: Speedup of the best over the baseline and over the vendor config.
        counts: Trials by outcome.
        failures: ``(trial number, outcome, reason)`` of failed and pruned trials.
        searched: Names of the knobs the sampler varied.
        confirmation: The confirmation stage, when one ran.
        peak_gflops_per_s: The host's measured float32 GEMM peak, when calibrated.
        peak_bf16_gflops_per_s: Its bfloat16 GEMM peak, where measured.
        conditions: The ``when`` conditions of conditional knobs, to show only the knobs a config uses.
        objective: The figure the study tuned (:func:`study_objective`).
        figure_units: The extra figures the workload declares, name -> unit (shown beside the objective).
        agreement: The study's output-agreement set-up (reference, bounds, check weights), or None when
            the workload declares no check.
        inaccurate: ``(trial number, reason)`` of configurations measured but outside the tolerance.
        time_by_outcome: Wall seconds of the study's measured trials (the search stage, references
            included) by how they ended: ``completed``, ``pruned``, ``failed``.
        warm_starts: The earlier studies this one started from (``autotune run --warm-start``), as stored.
    """

    study: str
    workload: str
    host: HostInfo
    configs: Mapping[str, dict[str, Any] | None]
    speedups: Mapping[str, Speedup | None]
    counts: Mapping[str, int]
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    confirmation: Confirmation | None = None
    peak_gflops_per_s: float | None = None
    conditions: Mapping[str, Mapping[str, Sequence[Any]]] = field(default_factory=dict)
    peak_bf16_gflops_per_s: float | None = None
    objective: Objective = field(default_factory=lambda: Objective("value", "", "maximize"))
    figure_units: Mapping[str, str] = field(default_factory=dict)
    agreement: Mapping[str, Any] | None = None
    inaccurate: list[tuple[int, str]] = field(default_factory=list)
    time_by_outcome: Mapping[str, float] = field(default_factory=dict)
    warm_starts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metric_name(self) -> str:
        """The objective with its unit: axis titles and Optuna's metric name."""
        return self.objective.label

    @property
    def best(self) -> dict[str, Any] | None:
        """The best trial's record."""
        return self.configs.get("best")


def summarize_study(
    study: optuna.Study, space: SearchSpace | None, host: HostInfo, calibration: Calibration | None = None
) -> StudySummary:
    """Summarize a stored study.

    When the study holds a confirmation stage that measured its winner in estimation rounds, the
    winner is the best configuration and the speedups are its paired ratios over those rounds;
    otherwise the fastest search trial is, with intervals within one process each. Without ``space``
    (reading a study whose space file is not at hand) the configurations and figures are the same;
    only which knobs were searched, and their conditions, are unknown.
    """
    objective = study_objective(study, space)
    # An earlier study's known-bad configurations handed to the sampler (warm start): nothing measured here.
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("role") != PRIOR_ROLE]
    measured = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and "repeat_of" not in t.user_attrs]
    configs: dict[str, dict[str, Any] | None] = {}
    for role in ("baseline", "vendor_recommended"):  # references are reported even when inaccurate
        matching = [t for t in measured if t.user_attrs.get("role") == role]
        configs[role] = _record(matching[0]) if matching else None
    feasible = [t for t in measured if is_feasible(t)]
    best = (max if objective.maximize else min)(feasible, key=lambda t: t.value) if feasible else None
    configs["best"] = _record(best) if best else None
    speedups = {
        "vs_baseline": _speedup(configs["best"], configs["baseline"], objective),
        "vs_vendor": _speedup(configs["best"], configs["vendor_recommended"], objective),
    }
    speedups.update(layout_speedups(configs["best"], feasible, objective, _record, _speedup))
    confirmation = _confirmation(study, objective)
    winner = confirmation.candidate(confirmation.winner) if confirmation and confirmation.winner else None
    by_number = {t.number: t for t in trials}
    if winner is None or winner.trial not in by_number or winner.label not in confirmation.rates:
        confirmation = None  # none, or cut short before it measured a winner: the search's figures stand
    else:
        configs["best"] = _record(by_number[winner.trial])
        speedups = {
            name: None if value is None else paired(confirmation, value)
            for name, value in confirmation.speedups.items()
        }
    counts = Counter(str(t.user_attrs.get("outcome", t.state.name.lower())) for t in trials)
    failures = [
        (t.number, str(t.user_attrs.get("outcome", t.state.name.lower())), str(t.user_attrs.get("reason", "")))
        for t in trials
        if t.state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    ]
    pins = study.user_attrs.get("pins", {})
    return StudySummary(
        study=study.study_name,
        workload=space.workload if space else str(study.user_attrs.get("workload", "")),
        host=host,
        configs=configs,
        speedups=speedups,
        counts=dict(counts),
        failures=failures,
        searched=space.searched(pins) if space else [],
        conditions={name: dict(knob.when) for name, knob in space.knobs.items() if knob.when} if space else {},
        confirmation=confirmation,
        objective=objective,
        figure_units=dict(space.contract.figures) if space and space.contract else dict(
            study.user_attrs.get("figure_units") or {}),
        peak_gflops_per_s=calibration.peak_gflops_per_s if calibration else study.user_attrs.get(
            "gemm_peak_gflops_per_s"),
        peak_bf16_gflops_per_s=calibration.bfloat16_peak_gflops_per_s if calibration else study.user_attrs.get(
            "gemm_peak_bf16_gflops_per_s"),
        agreement=study.user_attrs.get(AGREEMENT_ATTR),
        inaccurate=[(t.number, str(t.user_attrs.get("reason", ""))) for t in measured if not is_feasible(t)],
        time_by_outcome=_time_by_outcome(trials),
        warm_starts=list(study.user_attrs.get(WARM_STARTS_ATTR) or []),
    )


def _time_by_outcome(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[str, float]:
    spent = {"completed": 0.0, "pruned": 0.0, "failed": 0.0}
    for trial in trials:
        wall = trial.user_attrs.get("wall_seconds")
        if "repeat_of" in trial.user_attrs or not isinstance(wall, int | float):
            continue
        kind = {optuna.trial.TrialState.COMPLETE: "completed",
                optuna.trial.TrialState.PRUNED: "pruned"}.get(trial.state, "failed")
        spent[kind] += float(wall)
    return spent


def stored_host(study: optuna.Study) -> HostInfo | None:
    """The host record the study was started on, or None when it holds none.

    Raises:
        UserError: The record is there but unreadable.
    """
    stored = study.user_attrs.get("host")
    if not stored:
        return None
    try:
        return HostInfo.from_dict(stored)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"study {study.study_name!r} holds an unreadable host record") from None


def study_document(study: optuna.Study) -> dict[str, Any]:
    """The ``best.json`` document of a stored study, from the storage alone (no file, no space file).

    The storage is the source of truth: ``export``, ``exec --study`` and ``verify`` read this, and
    ``best.json`` is the same document written out.

    Raises:
        UserError: The study holds no host record (no run ever started measuring in it).
    """
    host = stored_host(study)
    if host is None:
        raise UserError(f"study {study.study_name!r} holds no host record: no `autotune run` measured in it yet")
    return best_document(summarize_study(study, None, host))


def study_objective(study: optuna.Study, space: SearchSpace | None = None) -> Objective:
    """The figure a study tuned: as the study recorded it, else as its space declares it.

    A study started before objectives were recorded, read without its space file, falls back to Optuna's
    own stored value of each trial (name ``value``, no unit) in the study's direction.
    """
    data = study.user_attrs.get(OBJECTIVE_ATTR)
    if isinstance(data, dict):
        try:
            return Objective(**data)
        except TypeError:
            pass
    if space is not None and space.contract is not None:
        return space.objective
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return Objective("value", "", "maximize" if maximize else "minimize")


def _confirmation(study: optuna.Study, objective: Objective) -> Confirmation | None:
    data = study.user_attrs.get(CONFIRMATION_ATTR)
    if not data:
        return None
    try:
        return Confirmation.from_dict(data, objective)
    except (KeyError, TypeError):
        return None


def _record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"trial": trial.number, "value": trial.value, **trial.user_attrs}


def paired(confirmation: Confirmation, value: Mapping[str, Any]) -> Speedup:
    """A :func:`autotune.confirm.paired_speedup` result as a :class:`Speedup`."""
    runs = {"stage": ESTIMATE, "rounds": list(value["round_numbers"]), "labels": list(value["labels"]),
            "winner_chosen_by": confirmation.chosen_by,
            "selection_rounds": list(range(1, confirmation.selection_rounds + 1))}
    return Speedup(value["value"], value["low"], value["high"], value["level"], value["method"], PAIRED,
                   describe(confirmation, value), runs)


def _speedup(
    faster: Mapping[str, Any] | None, slower: Mapping[str, Any] | None, objective: Objective
) -> Speedup | None:
    """How many times better one search trial is than another, with an interval within one process each.

    No between-process spread was measured, so the interval covers the ratio of these two processes'
    median step times only (scaled to the figures' ratio: their work per step differs, a constant);
    it says nothing about what re-runs would give.
    """
    if not faster or not slower or not faster.get("step_seconds") or not slower.get("step_seconds"):
        return None
    value_fast, value_slow = objective.value(faster), objective.value(slower)
    if not value_fast or not value_slow:
        return None
    fast, slow = list(faster["step_seconds"]), list(slower["step_seconds"])
    point = objective.speedup(value_fast, value_slow)
    scale = point / (statistics.median(slow) / statistics.median(fast))
    interval = ratio_of_medians_interval(slow, fast)
    basis = (f"ratio of the medians of search trials {faster['trial']} and {slower['trial']} "
             f"({len(fast)} and {len(slow)} timed steps), {METHOD_TEXT[interval.method]}; no confirmation rounds "
             "measured the spread between processes")
    return Speedup(value=point, low=interval.low * scale, high=interval.high * scale,
                   level=interval.level, method=interval.method, scope=WITHIN_PROCESS, basis=basis,
                   runs={"trials": [faster["trial"], slower["trial"]], "timed_steps": [len(fast), len(slow)]},
                   at_least=True)


def best_document(summary: StudySummary) -> dict[str, Any]:
    """The versioned ``best.json`` document."""
    return {
        "schema": BEST_SCHEMA,
        "kind": BEST_KIND,
        "study": summary.study,
        "workload": summary.workload,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host_fingerprint": summary.host.fingerprint,
        "host": summary.host.to_dict(),
        **{role: _entry(summary.configs.get(role)) for role in ROLES},
        "speedup": {name: None if s is None else speedup_entry(s) for name, s in summary.speedups.items()},
        "trials": dict(summary.counts),
        "warm_starts": summary.warm_starts,
        "agreement": None if summary.agreement is None else {
            **summary.agreement,
            "inaccurate": [{"trial": n, "reason": why} for n, why in summary.inaccurate],
        },
        "figures": {role: role_figures(summary, role) for role in ROLES},
        "gemm_peak_gflops_per_s": summary.peak_gflops_per_s,
        "gemm_peak_bf16_gflops_per_s": summary.peak_bf16_gflops_per_s,
        "confirmation": None if summary.confirmation is None else {
            "winner": summary.confirmation.winner,
            "rates": summary.confirmation.rates,
            "rounds": summary.confirmation.rounds,
            "runs": [asdict(r) for r in summary.confirmation.runs],
            "selection_rounds": summary.confirmation.selection_rounds,
            "selection": summary.confirmation.selection,
            "chosen_by": summary.confirmation.chosen_by,
        },
    }


def speedup_entry(speedup: Speedup) -> dict[str, Any]:
    """A speedup in ``best.json``. ``ci95`` is schema 1's name for the interval, kept for its readers:
    its level is ``level``, not necessarily 95%."""
    return {
        "value": speedup.value,
        "ci95": [speedup.low, speedup.high],
        "interval": [speedup.low, speedup.high],
        "level": speedup.level,
        "level_is_lower_bound": speedup.at_least,
        "method": speedup.method,
        "scope": speedup.scope,
        "basis": speedup.basis,
        "runs": dict(speedup.runs),
    }


def _entry(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    keys = ("trial", "role", "config", "env", "params", "cpus", "instances", "instance_figures", "step_seconds",
            "effective", "agreement", *FIGURES)
    return {**{key: record.get(key) for key in keys}, **figures_of(record)}


def role_figures(summary: StudySummary, role: str) -> dict[str, float | None] | None:
    """The objective, the declared extra figures, share of peak and speedup of one role's configuration.

    Confirmed figures (the median over the estimation rounds, paired speedups) when the confirmation
    stage measured the configuration; the search trial's figures otherwise. The extras come from the
    search trial, rescaled to the confirmed speed: a figure per second scales with it, one in seconds
    inversely, others stay as measured.
    """
    record = summary.configs.get(role)
    if record is None:
        return None
    objective = summary.objective
    searched = objective.value(record)
    label = confirmation_label(summary, role)
    confirmation = summary.confirmation
    value = searched
    if confirmation is not None and label in confirmation.rates:
        value = confirmation.rates[label]
    faster = objective.speedup(value, searched) if value and searched else 1.0
    figures: dict[str, float | None] = {objective.name: value}
    for name, unit in summary.figure_units.items():
        measured = record.get(name)
        if name == objective.name or not isinstance(measured, int | float):
            figures[name] = None if name != objective.name else value
        elif unit.endswith("/s"):
            figures[name] = measured * faster
        elif unit == "s":
            figures[name] = measured / faster
        else:
            figures[name] = measured
    gflops = figures.get("gflops_per_s")
    speedup = None
    if role != "baseline":
        if confirmation is not None and label in confirmation.rates:
            found = paired_speedup(confirmation.runs, label, "baseline", objective)
            speedup = found["value"] if found else None
        elif (base := objective.value(summary.configs.get("baseline"))) and value:
            speedup = objective.speedup(value, base)
    return {
        **figures,
        "share_of_peak": gflops / peak if gflops and (peak := _peak(summary, record)) else None,
        "speedup_vs_baseline": speedup,
    }


def knob_active(summary: StudySummary, knob: str, config: Mapping[str, Any]) -> bool:
    return all(config.get(other) in values for other, values in summary.conditions.get(knob, {}).items())


def _peak(summary: StudySummary, record: Mapping[str, Any]) -> float | None:
    """The GEMM peak a trial is measured against: bfloat16's when it computed in bfloat16, else float32's.

    What it computed in is what the trial observed (``effective.precision_policy``), not a knob's name.
    """
    effective = record.get("effective") or {}
    if "bfloat16" in str(effective.get("precision_policy", "")) and summary.peak_bf16_gflops_per_s:
        return summary.peak_bf16_gflops_per_s
    return summary.peak_gflops_per_s


def confirmation_label(summary: StudySummary, role: str) -> str:
    """The confirmation stage's label of a role's configuration."""
    if role == "best" and summary.confirmation is not None and summary.confirmation.winner:
        return summary.confirmation.winner
    return role


def role_speedup(summary: StudySummary, role: str) -> Speedup | None:
    """The speedup over the baseline of a role's configuration, with its interval (None for the baseline)."""
    if role == "baseline":
        return None
    if role == "best":
        return summary.speedups.get("vs_baseline")
    confirmation = summary.confirmation
    label = confirmation_label(summary, role)
    if confirmation is not None and label in confirmation.rates:
        found = paired_speedup(confirmation.runs, label, "baseline", summary.objective)
        return paired(confirmation, found) if found else None
    return _speedup(summary.configs.get(role), summary.configs.get("baseline"), summary.objective)


def load_best(path: Path) -> dict[str, Any]:
    """Read a ``best.json`` document.

    Raises:
        UserError: Missing, unreadable, not JSON, or not a best.json of a schema this autotune reads
            (:data:`READABLE_BEST_SCHEMAS`).
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("kind") != BEST_KIND:
        raise UserError(f"{path}: not an autotune best.json")
    if data.get("schema") not in READABLE_BEST_SCHEMAS:
        readable = " and ".join(str(v) for v in READABLE_BEST_SCHEMAS)
        raise UserError(f"{path}: schema {data.get('schema')!r}, this autotune reads {readable}")
    return data


def load_study_config(study: optuna.Study, which: str, space: SearchSpace, host: HostInfo) -> StudyConfig:
    """The baseline, best or vendor configuration of a loaded study, completed by ``space``.

    ``best`` is the report's best (the confirmation stage's winner when one ran).

    Raises:
        UserError: ``which`` is unknown, or the study has no successful trial of that role.
    """
    if which not in CONFIG_ROLES:
        raise UserError(f"--config {which!r}: expected one of {', '.join(CONFIG_ROLES)}")
    record = summarize_study(study, space, host).configs.get(CONFIG_ROLES[which])
    if not record or not isinstance(record.get("config"), Mapping):
        role = CONFIG_ROLES[which]
        raise UserError(f"study {study.study_name!r} has no successful {role} trial to profile")
    return StudyConfig(
        study=study.study_name,
        workload=space.workload,
        which=which,
        trial=int(record["trial"]),
        config=space.configure(record["config"]),
        host_fingerprint=study.user_attrs.get("host_fingerprint"),
    )

