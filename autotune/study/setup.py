"""Setting a study up for a worker: its name, Optuna study and sampler, host and pin checks, references.

Everything here runs before the first trial, under the study's set-up lock when it reads then writes
(:func:`open_shared_study`), so workers started together on several hosts stay consistent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import psutil

from autotune.errors import UserError
from autotune.host import HostInfo
from autotune.lock import study_setup_lock
from autotune.protocol import Outcome
from autotune.pruning import BestFractionPruner
from autotune.space import SearchSpace
from autotune.study.options import RunOptions
from autotune.study.storage import redact, storage_errors, storage_url
from autotune.study.warm import warm_start
from autotune.summary import OBJECTIVE_ATTR

# Trials before TPE models the space, the baseline and vendor references included. Optuna's default
# (10 random trials) spends a third of a 30-trial budget on random configurations; with the two
# references as an informed start (one known-slow, one known-good) TPE models the space right after
# them. Chosen by its worst case over the recorded landscapes (benchmarks/landscapes/, replayed with
# pruning and trial costs by benchmarks/search_efficiency.py; README "Search efficiency"): with 2, the
# worst median to the noise target was 21% of the grid (3 of 14 on the training landscape, where the
# vendor configuration is not among the best) and to 95% of the best 35%; with 4 (the earlier default)
# 29% and 42%, with 3 29% and 42%, with 6 and 10 29% and 46-48%.
TPE_STARTUP_TRIALS = 2
# Study user attribute: reference roles that resolve to the configuration of an earlier one on this host.
SAME_ATTR = "same_configuration"
# Study user attribute: the user's --tolerance items (a list, empty for the space's own bounds).
TOLERANCE_ATTR = "tolerance_overrides"


def default_study_name(space: SearchSpace, pins: Mapping[str, Any], host: HostInfo) -> str:
    """``<workload>-<label values>-<hash>``: the hash covers what is tuned, so two jobs never share a study.

    It covers the host fingerprint, the pins, a command workload's program and the content of every file
    a pin names (a model file retrained in place is another study). The label values are those of the
    contract's ``label`` knobs (e.g. the mode), for people reading a list of studies.
    """
    files = {name: _file_digest(value) for name, value in sorted(pins.items())
             if space.knobs[name].type == "file" and value}
    identity = {
        "workload": space.workload,
        "host": host.fingerprint,
        "pins": {k: str(v) for k, v in sorted(pins.items())},
        "command": list(space.contract.command or ()) if space.contract else [],
        "files": files,
    }
    if space.agreement is not None and space.agreement.overrides:  # a tolerance of the user's is another study
        identity["tolerance"] = list(space.agreement.overrides)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    labels = [str(pins.get(k, space.knobs[k].default)) for k in (space.contract.label if space.contract else ())]
    return "-".join([space.workload, *labels, digest])


def _file_digest(path: str) -> str:
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return sha.hexdigest()


def open_shared_study(
    options: RunOptions, name: str, host: HostInfo, space: SearchSpace, pins: Mapping[str, Any]
) -> optuna.Study:
    """Open the study and prepare it for this worker, safely beside other workers.

    Everything here reads, then writes (the host fingerprint and pins recorded once, the references
    enqueued once), so it runs under the study's set-up lock (:func:`autotune.lock.study_setup_lock`:
    a PostgreSQL advisory lock shared by every host, a file lock for SQLite). Each run that joins the
    study samples with ``seed + runs before it``, so workers started with the same command (and a
    resumed run) do not propose the same configurations in the same order.
    """
    url = storage_url(options.storage)
    with study_setup_lock(url, name, shown_url=redact(url)):
        study = _open_study(options, name, space, pins)
        _check_host(study, host, options.allow_mixed_hosts)
        _check_pins(study, space, pins)
        _check_latency_bound(study, space, options.max_latency_s)
        _fail_orphans(study)
        enqueue_references(study, space, pins)
        if options.warm_start:
            warm_start(study, options.warm_start, space, pins, host)
        runs = int(study.user_attrs.get("runs", 0))
        study.set_user_attr("runs", runs + 1)
    if runs:
        study.sampler = make_sampler(dataclasses.replace(options, seed=options.seed + runs), space, pins)
    return study


def _open_study(options: RunOptions, name: str, space: SearchSpace, pins: Mapping[str, Any]) -> optuna.Study:
    url = storage_url(options.storage)
    with storage_errors(url):
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=None)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=space.objective.direction,
            sampler=make_sampler(options, space, pins),
            pruner=BestFractionPruner() if options.prune else optuna.pruners.NopPruner(),
            load_if_exists=True,
        )
        name_metric(study, space)
        return study


def name_metric(study: optuna.Study, space: SearchSpace) -> None:
    """Name the objective with its unit, so dashboards say ``samples_per_s (samples/s)``, not ``Objective 0``."""
    if study.metric_names != [space.metric_name]:
        with warnings.catch_warnings():  # experimental in Optuna 5; the name is all we want from it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([space.metric_name])


def make_sampler(options: RunOptions, space: SearchSpace, pins: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=options.seed)
    if options.sampler == "grid":
        grid = {}
        for name in space.searched(pins):
            knob = space.knobs[name]
            if knob.type == "bool":
                grid[name] = [False, True]
            elif knob.choices is not None:
                grid[name] = list(knob.choices)
            elif knob.type == "int":
                grid[name] = list(range(int(knob.low), int(knob.high) + 1))
            else:
                raise UserError(f"--sampler grid cannot enumerate the float knob {name!r}; pin it with --set")
        return _GridSampler(grid, seed=options.seed)
    return search_sampler(options.seed)


def search_sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    """The default sampler of ``autotune run``, started after the enqueued references.

    Multivariate TPE grouped for the conditional knobs: the sampler whose worst recorded landscape was
    best (``benchmarks/search_efficiency.py``; the guard is ``tests/autotune/test_search_efficiency.py``).
    """
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, n_startup_trials=TPE_STARTUP_TRIALS
    )


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` after the last grid point.

    That call only works inside ``Study.optimize`` and raises under ask/tell; the loop asks
    :meth:`is_exhausted` before each trial instead.
    """

    def after_trial(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any
    ) -> None:
        return None


def _check_host(study: optuna.Study, host: HostInfo, allow_mixed: bool) -> None:
    recorded = study.user_attrs.get("host_fingerprint")
    if recorded is None:
        study.set_user_attr("host_fingerprint", host.fingerprint)
        study.set_user_attr("host", host.to_dict())
    elif recorded != host.fingerprint and not allow_mixed:
        raise UserError(
            f"study {study.study_name!r} was recorded on host {recorded}, this host is {host.fingerprint}; "
            "use another --study or --allow-mixed-hosts"
        )


def _check_pins(study: optuna.Study, space: SearchSpace, pins: Mapping[str, Any]) -> None:
    recorded = study.user_attrs.get("pins")
    wanted = dict(sorted(pins.items()))
    if recorded is None:
        study.set_user_attr("pins", wanted)
        study.set_user_attr("workload", space.workload)
        study.set_user_attr(OBJECTIVE_ATTR, dataclasses.asdict(space.objective))
        study.set_user_attr("figure_units", dict(space.contract.figures) if space.contract else {})
        if space.contract is not None and space.contract.command is not None:
            study.set_user_attr("command", list(space.contract.command))
        if space.path is not None:
            study.set_user_attr("space_path", str(Path(space.path).resolve()))
    elif recorded != wanted:
        shown = " ".join(f"--set {k}={v}" for k, v in recorded.items()) or "no --set"
        raise UserError(f"study {study.study_name!r} was started with {shown}; use the same or another --study")
    _check_tolerance(study, space)


def _check_tolerance(study: optuna.Study, space: SearchSpace) -> None:
    """Record the user's tolerance overrides once; a run with others is another study."""
    wanted = list(space.agreement.overrides) if space.agreement is not None else []
    recorded = study.user_attrs.get(TOLERANCE_ATTR)
    if recorded is None:
        study.set_user_attr(TOLERANCE_ATTR, wanted)
    elif recorded != wanted:
        shown = " ".join(f"--tolerance {t}" for t in recorded) or "no --tolerance"
        raise UserError(f"study {study.study_name!r} was started with {shown}; a tolerance is part of the study: "
                        "use the same or another --study")


def _check_latency_bound(study: optuna.Study, space: SearchSpace, bound: float | None) -> None:
    """Record the study's ``--max-latency`` once; a later run must give the same (its trials were judged by it)."""
    if bound is not None and (space.contract is None or space.contract.latency is None):
        raise UserError(f"--max-latency: workload {space.workload!r} declares no latency figure "
                        "(latency = \"FIGURE\" in its [workload] table)")
    recorded = study.user_attrs.get("max_latency_s", "unset")
    if recorded == "unset":
        study.set_user_attr("max_latency_s", bound)
    elif recorded != bound:
        shown = "no --max-latency" if recorded is None else f"--max-latency {recorded:g}"
        raise UserError(f"study {study.study_name!r} was started with {shown}; use the same or another --study")


def _fail_orphans(study: optuna.Study) -> None:
    """Fail RUNNING trials whose driver process on this host is gone (a killed earlier run)."""
    me = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != me or not pid.isdigit() or (psutil.pid_exists(int(pid)) and int(pid) != os.getpid()):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "outcome", Outcome.INTERRUPTED.value)
        study._storage.set_trial_user_attr(trial._trial_id, "reason", "the driver was killed during this trial")
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


def enqueue_references(study: optuna.Study, space: SearchSpace, pins: Mapping[str, Any]) -> None:
    # An interrupted reference measured nothing: enqueue it again, so every study reports it.
    roles = {
        t.user_attrs.get("role")
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("outcome") != Outcome.INTERRUPTED.value
    }
    searched = space.searched(pins)
    same = dict(study.user_attrs.get(SAME_ATTR) or {})
    resolved: dict[tuple, str] = {}
    for role in space.roles():
        config = space.reference(role, pins)
        key = space.fingerprint_config(config)
        if key in resolved:  # a rule that resolves to an earlier reference here is measured once
            same[role] = resolved[key]
            continue
        resolved[key] = role
        if role in roles:
            continue
        params = {n: config[n] for n in searched if space.knobs[n].active(config)}
        study.enqueue_trial(params, user_attrs={"role": role})
    if same != (study.user_attrs.get(SAME_ATTR) or {}):
        study.set_user_attr(SAME_ATTR, same)
