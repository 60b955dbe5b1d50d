"""The tuning loop: one Optuna study, ask -> run one subprocess trial -> tell, until the budget ends.

:func:`run_study` owns the flow. It opens (or resumes) the study in Optuna's RDB storage, checks the
host fingerprint, fails trials orphaned by a killed driver, enqueues the baseline and the
vendor-recommended configs once, then runs trials one at a time (trials that share cores would
measure each other). Every trial's record is stored in its user attributes before it is told, so
nothing measured is lost. At the end it prints the baseline / vendor / best table and writes
``best.json`` and ``report.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psutil
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autotune.calibrate import Calibration, calibrate, load_calibration
from autotune.confirm import (
    CONFIRMATION_ATTR,
    DEFAULT_REPEATS,
    DEFAULT_SELECT_ROUNDS,
    DEFAULT_TOP,
    SELECT,
    Run,
    candidates_of,
    confirm,
    estimate_seconds,
    finalists_of,
    rerun_seconds,
)
from autotune.console import console, format_figure, format_rate
from autotune.errors import UserError
from autotune.exits import Exit
from autotune.host import HostInfo
from autotune.launch import default_memory_cap_mb, trial_spec
from autotune.lock import CoreLock, CoresBusy, study_setup_lock
from autotune.protocol import Outcome
from autotune.pruning import BestFractionPruner, best_step_seconds, warmup_too_slow
from autotune.record import trial_record
from autotune.report import (
    ReportError,
    StudySummary,
    print_summary,
    summarize_study,
    write_outputs,
    write_report,
)
from autotune.runner import TrialRunner, TrialSpec
from autotune.space import REFERENCES, SearchSpace

DEFAULT_STORAGE = "sqlite:///autotune.db"
# Trials before TPE models the space, the baseline and vendor references included. Optuna's default
# (10 random trials) spends a third of a 30-trial budget on random configurations; with the two
# references as an informed start (one known-slow, one known-good) TPE may begin after two random
# ones. benchmarks/search_efficiency.py: median trials to 95% of the grid's best fell from 11.5 to 7
# (of 49), and the share of seeds within a quarter of the grid from 57% to 86%.
TPE_STARTUP_TRIALS = 4
# After this many consecutive repeats of measured configurations the space is taken as exhausted.
MAX_CONSECUTIVE_REPEATS = 25
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class RunOptions:
    """Options of one ``autotune run``.

    Attributes:
        trials: Trials to run in this call (references included, repeats answered from storage).
        timeout_s: Wall-clock budget; no trial starts after it.
        storage: Optuna storage URL; None means :data:`DEFAULT_STORAGE`.
        study_name: Study name; None derives it from workload, mode and host.
        sampler: ``tpe``, ``random`` or ``grid``.
        seed: Sampler seed.
        data_dir: Dataset folder passed to the workload, or None for synthetic data.
        report_dir: Output folder; None means ``reports/<study>``.
        trial_timeout_s: Wall-clock limit of one trial.
        memory_cap_mb: Memory cap of one trial; None means a share of the host's memory.
        allow_mixed_hosts: Accept a study recorded on a host with another fingerprint.
        prune: Whether search trials may be pruned.
        wait_for_cores: Wait while another autotune worker measures on this host; False stops the
            run instead (:class:`autotune.lock.CoresBusy`).
        confirm_top: Search candidates (finalists) re-measured in the confirmation stage.
        confirm_repeats: Estimation rounds of the confirmation stage (winner, vendor, baseline);
            0 skips the stage.
        confirm_select_rounds: Selection rounds of the finalists alone, which choose the winner.
        full_report: Write the full report (figures, HTML) rather than ``best.json`` and a short
            ``report.md``.
        profile: Profile the baseline and the best configuration at the end (op-time breakdown).
    """

    trials: int = 30
    timeout_s: float = 1080.0
    storage: str | None = None
    study_name: str | None = None
    sampler: str = "tpe"
    seed: int = 0
    data_dir: str | None = None
    report_dir: Path | None = None
    trial_timeout_s: float = 600.0
    memory_cap_mb: float | None = None
    allow_mixed_hosts: bool = False
    prune: bool = True
    wait_for_cores: bool = True
    confirm_top: int = DEFAULT_TOP
    confirm_repeats: int = DEFAULT_REPEATS
    confirm_select_rounds: int = DEFAULT_SELECT_ROUNDS
    full_report: bool = False
    profile: bool = False


def run_study(
    options: RunOptions,
    host: HostInfo,
    space: SearchSpace,
    pins: Mapping[str, Any],
    runner: TrialRunner | None = None,
) -> int:
    """Run (or resume) a study and write its outputs.

    Returns:
        The exit status: 0 when the study ran, 1 when no trial succeeded, 130 when interrupted.

    Raises:
        UserError: The storage cannot be opened, the study belongs to another host or settings, or
            the report folder cannot be made (checked before any trial runs).
        ReportError: The report could not be written after the trials ran (a full disk): every
            trial is stored, the summary is printed, and ``autotune report`` can write it later.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = options.study_name or default_study_name(space, pins, host)
    report_dir = options.report_dir or Path("reports") / name
    _check_report_dir(report_dir)
    cores = CoreLock.for_host(host)
    if not options.wait_for_cores:
        _check_cores_free(cores)
    study = open_shared_study(options, name, host, space, pins)
    started = time.monotonic()
    runner = runner or TrialRunner()
    calibration = _calibration(host, study)
    loop = _Loop(options, host, space, pins, study, runner, cores)
    try:
        interrupted = loop.run()
    except KeyboardInterrupt:  # Ctrl-C between two measurements (asking, sampling, storing)
        loop.fail_asked_trial()
        interrupted = True
    if not interrupted and options.confirm_repeats > 0:
        interrupted = _confirm(options, host, space, study, runner, cores)
    elif options.confirm_repeats <= 0 and study.user_attrs.get(CONFIRMATION_ATTR):
        study.set_user_attr(CONFIRMATION_ATTR, None)  # an older confirmation no longer covers the study
    summary = summarize_study(study, space, host, calibration)
    if options.profile and not interrupted and summary.best is not None:
        interrupted = _profile_references(options, host, space, study, cores, report_dir)
    loop.stats["elapsed_s"] = time.monotonic() - started
    try:
        if options.full_report:
            write_report(summary, study, report_dir)
        else:
            write_outputs(summary, report_dir)
    except ReportError as exc:
        print_summary(summary, report_dir, loop.stats, written=False)
        raise ReportError(f"{exc}; every trial is stored in study {name!r}: write the report elsewhere with "
                          f"`autotune report --study {name} --report-dir DIR` (same --storage, --space)") from None
    print_summary(summary, report_dir, loop.stats)
    if interrupted:
        return Exit.INTERRUPTED
    return 0 if summary.best is not None else 1


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
    url = storage_url(options)
    with study_setup_lock(url, name, shown_url=redact(url)):
        study = _open_study(options, name, space, pins)
        _check_host(study, host, options.allow_mixed_hosts)
        _check_pins(study, space, pins)
        _fail_orphans(study)
        _enqueue_references(study, space, pins)
        runs = int(study.user_attrs.get("runs", 0))
        study.set_user_attr("runs", runs + 1)
    if runs:
        study.sampler = _sampler(dataclasses.replace(options, seed=options.seed + runs), space, pins)
    return study


def _check_report_dir(report_dir: Path) -> None:
    """Refuse a report folder that cannot be made, before any trial runs (a full disk still fails later)."""
    existing = report_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    what = "it" if existing == report_dir else str(existing)
    if not existing.is_dir():
        raise UserError(f"--report-dir {report_dir}: {what} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--report-dir {report_dir}: {what} is not writable")


def _check_cores_free(cores: CoreLock) -> None:
    if not cores.try_acquire():
        raise CoresBusy(f"another autotune worker is measuring on this host's cores ({cores.holder()}); "
                        "run without --no-wait to take turns with it")
    cores.release()


def _calibration(host: HostInfo, study: optuna.Study) -> Calibration | None:
    """The host's GEMM peak: stored, or measured now (once per host)."""
    calibration = load_calibration(host)
    if calibration is None:
        console.print("calibrating the float32 GEMM peak of this host (once)...")
        try:
            calibration = calibrate(host)
        except UserError as exc:
            console.print(f"warning: {exc}; GFLOP/s are shown without a share of peak")
            return None
    study.set_user_attr("gemm_peak_gflops_per_s", calibration.peak_gflops_per_s)
    study.set_user_attr("gemm_peak_bf16_gflops_per_s", calibration.bfloat16_peak_gflops_per_s)
    return calibration


def _confirm(
    options: RunOptions, host: HostInfo, space: SearchSpace, study: optuna.Study, runner: TrialRunner,
    cores: CoreLock,
) -> bool:
    """Run the confirmation stage; return True when it was interrupted."""
    candidates = candidates_of(study, space, options.confirm_top)
    if not candidates:
        return False
    memory_cap = options.memory_cap_mb or default_memory_cap_mb(host)
    finalists = finalists_of(candidates)
    selecting = len(finalists) > 1 and options.confirm_select_rounds > 0
    if selecting:
        console.print(f"confirmation: {options.confirm_select_rounds} selection round(s) of "
                      f"{', '.join(c.label for c in finalists)} choose the winner; then")
    references = [c.label for c in candidates if c not in finalists]
    console.print(f"confirmation: {options.confirm_repeats} estimation rounds of the "
                  f"{'winner' if selecting else finalists[0].label}, {', '.join(references) or 'no reference'} "
                  "measure the speedups")

    def make_spec(config: Mapping[str, Any]) -> TrialSpec:
        return trial_spec(space, config, host, data_dir=options.data_dir,
                          timeout_s=options.trial_timeout_s, memory_cap_mb=memory_cap)

    def on_run(run: Run) -> None:
        spread = f"CV {run.cv:.1%}" if len(run.step_seconds) > 1 else f"{len(run.step_seconds)} timed step"
        figure = f"{format_rate(run.voxels_per_s)} voxels/s ({spread})" if run.voxels_per_s else run.outcome
        stage = "selection" if run.stage == SELECT else "estimation"
        console.print(f"  {stage} round {run.round + 1}: {run.label}: {figure}")

    cores.acquire("confirmation stage")
    try:
        confirm(study, candidates, make_spec, repeats=options.confirm_repeats,
                select_rounds=options.confirm_select_rounds, runner=runner, on_run=on_run)
    except KeyboardInterrupt:
        return True
    finally:
        cores.release()
    return False


def load_existing_study(storage: str | None, name: str) -> optuna.Study:
    """Open a study that must already exist (for commands that read one).

    Raises:
        UserError: The storage cannot be opened or has no such study.
    """
    url = storage or DEFAULT_STORAGE
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise UserError(f"no study storage at {path}: run `autotune run` first, or give --storage")
    with storage_errors(url):
        storage_ = optuna.storages.RDBStorage(url, heartbeat_interval=None, skip_table_creation=False)
        names = [s.study_name for s in storage_.get_all_studies()]
        if name not in names:
            shown = ", ".join(names) or "none"
            raise UserError(f"no study {name!r} in {redact(url)} (studies: {shown})")
        return optuna.load_study(study_name=name, storage=storage_)


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite://`` storage URL, or None for any other storage."""
    prefix, sep, rest = url.partition("://")
    if not sep or not prefix.startswith("sqlite"):
        return None
    database = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel.db, sqlite:////abs.db
    return Path(database.split("?", 1)[0] or ":memory:")


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn the errors of opening a storage (Optuna's, SQLAlchemy's, a driver's) into one-line UserErrors."""
    try:
        yield
    except UserError:
        raise
    except (ImportError, ValueError, optuna.exceptions.OptunaError) as exc:
        raise UserError(f"cannot open storage {redact(url)}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # SQLAlchemy's errors: the driver does not import SQLAlchemy itself
        if type(exc).__module__.startswith("sqlalchemy"):
            raise UserError(f"cannot open storage {redact(url)}: {str(exc).splitlines()[0]}") from None
        raise


def _profile_references(
    options: RunOptions, host: HostInfo, space: SearchSpace, study: optuna.Study, cores: CoreLock, report_dir: Path
) -> bool:
    """Profile the baseline and the best into ``report_dir``; return True when interrupted."""
    from autotune.profile import (
        ProfileFailed,
        compare,
        load_study_config,
        profile_config,
        profile_document,
        write_profile,
    )

    memory_cap = options.memory_cap_mb or default_memory_cap_mb(host)
    found = {}
    cores.acquire("profiling")
    try:
        for which in ("baseline", "best"):
            try:
                stored = load_study_config(study, which, space, host)
                console.print(f"profiling the {which} (trial {stored.trial}) for the op-time breakdown")
                breakdown = profile_config(space, stored.config, host, data_dir=options.data_dir,
                                           timeout_s=options.trial_timeout_s, memory_cap_mb=memory_cap)
                write_profile(report_dir / f"profile-{which}.json", profile_document(stored, breakdown, host))
                found[which] = breakdown
            except (ProfileFailed, UserError) as exc:
                console.print(f"warning: no op-time breakdown of the {which}: {exc}")
        if len(found) == 2:
            console.print(compare(found["baseline"], found["best"]))
    except KeyboardInterrupt:
        return True
    finally:
        cores.release()
    return False


def storage_url(options: RunOptions) -> str:
    """The storage URL a run uses."""
    return options.storage or DEFAULT_STORAGE


def _open_study(options: RunOptions, name: str, space: SearchSpace, pins: Mapping[str, Any]) -> optuna.Study:
    url = storage_url(options)
    with storage_errors(url):
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=None)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=space.objective.direction,
            sampler=_sampler(options, space, pins),
            pruner=BestFractionPruner() if options.prune else optuna.pruners.NopPruner(),
            load_if_exists=True,
        )
        name_metric(study, space)
        return study


def name_metric(study: optuna.Study, space: SearchSpace) -> None:
    """Name the study's objective with its unit, so dashboards say ``throughput (voxels/s)``, not ``Objective 0``."""
    if study.metric_names != [space.metric_name]:
        with warnings.catch_warnings():  # experimental in Optuna 5; the name is all we want from it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([space.metric_name])


def redact(url: str) -> str:
    """A storage URL with its password replaced by ``***`` (also in a URL that lacks its ``scheme://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    credentials, at, location = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}{at}{location}"


def password_of(url: str) -> str | None:
    """The password a storage URL holds, as typed, or None."""
    shown = redact(url)
    if shown == url:
        return None
    rest = url.partition("://")[2] or url
    return rest.rpartition("@")[0].partition(":")[2] or None


def _sampler(options: RunOptions, space: SearchSpace, pins: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
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
    return optuna.samplers.TPESampler(
        seed=options.seed, multivariate=True, group=True, n_startup_trials=TPE_STARTUP_TRIALS
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
        if space.contract is not None and space.contract.command is not None:
            study.set_user_attr("command", list(space.contract.command))
        if space.path is not None:
            study.set_user_attr("space_path", str(Path(space.path).resolve()))
    elif recorded != wanted:
        shown = " ".join(f"--set {k}={v}" for k, v in recorded.items()) or "no --set"
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


def _enqueue_references(study: optuna.Study, space: SearchSpace, pins: Mapping[str, Any]) -> None:
    # An interrupted reference measured nothing: enqueue it again, so every study reports it.
    roles = {
        t.user_attrs.get("role")
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("outcome") != INTERRUPTED
    }
    searched = space.searched(pins)
    for role in REFERENCES:
        if role in roles:
            continue
        config = space.reference(role, pins)
        params = {n: config[n] for n in searched if space.knobs[n].active(config)}
        study.enqueue_trial(params, user_attrs={"role": role})


@dataclass
class _Held:
    """One hold of the core lock: seconds waited for it, then held from ``start`` to ``end`` (Unix time)."""

    waited_s: float
    start: float
    end: float = 0.0


class _Loop:
    """The ask -> run -> tell loop with its progress display."""

    def __init__(
        self,
        options: RunOptions,
        host: HostInfo,
        space: SearchSpace,
        pins: Mapping[str, Any],
        study: optuna.Study,
        runner: TrialRunner,
        cores: CoreLock | None = None,
    ) -> None:
        self.options = options
        self.cores = cores or CoreLock.for_host(host)
        self.host = host
        self.space = space
        self.pins = pins
        self.study = study
        self.runner = runner
        self.memory_cap = options.memory_cap_mb or default_memory_cap_mb(host)
        self.stats = {"run": 0, "repeats": 0, "pruned": 0, "failed": 0, "time_saved_s": 0.0,
                      "elapsed_s": 0.0}
        self.seen = self._measured()
        self.asked: optuna.Trial | None = None

    def _measured(self) -> dict[tuple, optuna.trial.FrozenTrial]:
        seen = {}
        for trial in self.study.get_trials(deepcopy=False):
            config = trial.user_attrs.get("config")
            if (
                config
                and trial.state.is_finished()
                and "repeat_of" not in trial.user_attrs
                and trial.user_attrs.get("outcome") != INTERRUPTED  # says nothing of the config
            ):
                seen.setdefault(self._key(config), trial)
        return seen

    def _refresh_seen(self) -> None:
        for key, trial in self._measured().items():
            self.seen.setdefault(key, trial)

    def _key(self, config: Mapping[str, Any]) -> tuple:
        try:
            return self.space.fingerprint_config(self.space.configure(config))
        except UserError:
            return (("unreadable", repr(sorted(config.items()))),)

    def _reserve(self) -> float:
        """Seconds of the budget kept for the confirmation stage, from the candidates' trial times."""
        reserve = 0.0
        if self.options.confirm_repeats > 0:
            reserve += estimate_seconds(self.study, self.space, self.options.confirm_top, self.options.confirm_repeats,
                                        self.options.confirm_select_rounds)
        if self.options.profile:
            reserve += rerun_seconds(self.study, self.space, 1)
        return reserve

    def run(self) -> bool:
        """Run trials until the budget ends (the confirmation stage's share kept back); True when interrupted."""
        start = time.monotonic()
        deadline = start + self.options.timeout_s
        repeats_in_a_row = 0
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("trials", total=self.options.trials, status="")
            done = 0
            while done < self.options.trials and time.monotonic() < deadline - self._reserve():
                if self._grid_exhausted():
                    progress.console.print("every grid point was measured: stopping the search")
                    break
                remaining = deadline - self._reserve() - time.monotonic()
                trial = self.asked = self.study.ask()
                role = trial.user_attrs.get("role", "search")
                config = self.space.suggest(trial, self.pins)
                if role in REFERENCES:
                    config = self.space.reference(role, self.pins)
                status = f"best {self._best_text()} | left {remaining / 60:.1f} min"
                progress.update(task, description=f"trial {trial.number} ({role})", status=status)
                if role == "search":
                    self._refresh_seen()  # other workers' trials too
                earlier = self.seen.get(self._key(config)) if role == "search" else None
                if earlier is not None:
                    self._answer_repeat(trial, earlier)
                    repeats_in_a_row += 1
                    done += 1
                    progress.advance(task)
                    if repeats_in_a_row >= MAX_CONSECUTIVE_REPEATS:
                        progress.console.print("the search space looks exhausted: stopping the search")
                        break
                    continue
                repeats_in_a_row = 0
                progress.console.print(f"trial {trial.number} ({role}): {self._describe(config)}")
                try:
                    self._measure(trial, role, config, progress, task)
                except KeyboardInterrupt:
                    self._tell_interrupted(trial)
                    self.stats["elapsed_s"] = time.monotonic() - start
                    return True
                done += 1
                progress.advance(task)
        self.stats["elapsed_s"] = time.monotonic() - start
        return False

    def _grid_exhausted(self) -> bool:
        """Whether a grid search has visited every point and no enqueued trial waits."""
        sampler = self.study.sampler
        if not isinstance(sampler, optuna.samplers.GridSampler):
            return False
        if not sampler.is_exhausted(self.study):
            return False
        return not self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))

    def _measure(self, trial: optuna.Trial, role: str, config: dict[str, Any], progress: Progress, task: Any) -> None:
        trial.set_user_attr("role", role)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("config", config)
        spec = trial_spec(self.space, config, self.host, data_dir=self.options.data_dir,
                          timeout_s=self.options.trial_timeout_s, memory_cap_mb=self.memory_cap)

        objective = self.space.objective

        def on_step(steps: list[float], progress_: Mapping[str, Any]) -> bool:
            median = statistics.median(steps)
            progress.update(task, status=f"step {len(steps)}: median {median:.3f}s | best {self._best_text()}")
            if role != "search" or not self.options.prune:
                return False
            figures, work = progress_.get("step_figures"), progress_.get("work_per_step")
            if figures:
                running = statistics.median(figures)
            elif isinstance(work, int | float) and work > 0:
                running = objective.running(float(work), median)
            else:
                return False
            trial.report(running, len(steps) - 1)
            return trial.should_prune()

        best_before = self._best_value()

        def on_wait(waited: float, setup: Mapping[str, Any]) -> bool:
            if role != "search" or not self.options.prune:
                return False
            work = float(setup.get("work_per_step") or 0)
            return warmup_too_slow(waited, best_step_seconds(work, best_before, objective.maximize))

        with self._cores(trial, progress, task) as held:
            outcome = self.runner.run(spec, on_step=on_step, on_wait=on_wait)
        record = trial_record(config, spec, outcome, self.host)
        record["cores_wait_s"] = round(held.waited_s, 3)
        record["cores_held"] = [round(held.start, 3), round(held.end, 3)]
        if outcome.outcome is Outcome.PRUNED and outcome.step_seconds:
            median = statistics.median(outcome.step_seconds)
            planned = outcome.planned_steps or len(outcome.step_seconds)
            saved = max(0, planned - len(outcome.step_seconds)) * median
            record["time_saved_s"] = saved
            self.stats["time_saved_s"] += saved
        for key, value in record.items():
            trial.set_user_attr(key, value)
        line = f"trial {trial.number}: {outcome.outcome.value}"
        value = objective.value(record)
        if outcome.outcome is Outcome.OK and value is None:
            outcome_name = Outcome.BAD_OUTPUT.value
            record["outcome"], record["reason"] = outcome_name, f"the result has no figure {objective.name!r}"
            trial.set_user_attr("outcome", outcome_name)
            trial.set_user_attr("reason", record["reason"])
            finished = self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.stats["failed"] += 1
            line = f"trial {trial.number}: {outcome_name}: {record['reason']}"
        elif outcome.outcome is Outcome.OK:
            finished = self.study.tell(trial, value)
            median, cv = record["median_step_s"], record["cv"]
            line += f", {format_figure(value, objective.unit)} (median step {median:.3f}s, CV {cv:.1%})"
        elif outcome.outcome is Outcome.PRUNED:
            finished = self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self.stats["pruned"] += 1
            line += f" ({outcome.reason})"
        else:
            finished = self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.stats["failed"] += 1
            line += f": {outcome.reason}"
        if record.get("warning"):
            line += f"\n  warning: {record['warning']}"
        self.stats["run"] += 1
        # This trial, not the study's last one: an enqueued reference may be waiting after it.
        self.seen.setdefault(self._key(config), finished)
        progress.console.print(line)

    @contextlib.contextmanager
    def _cores(self, trial: optuna.Trial, progress: Progress, task: Any) -> Iterator[_Held]:
        """Hold this host's core lock while the trial measures; yield the wait and the held span."""
        note = f"trial {trial.number} of study {self.study.study_name}"
        waited = 0.0
        if not self.cores.try_acquire(note):
            holder = self.cores.holder()
            if not self.options.wait_for_cores:
                trial.set_user_attr("outcome", Outcome.INTERRUPTED.value)
                trial.set_user_attr("reason", f"not measured: another autotune worker was measuring ({holder})")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise CoresBusy(f"another autotune worker is measuring on this host's cores ({holder}); "
                                "run without --no-wait to take turns with it")
            message = f"waiting for cores: another autotune worker is measuring ({holder})"
            progress.update(task, status=message)
            progress.console.print(f"trial {trial.number}: {message}")
            waited = self.cores.acquire(note)
        held = _Held(waited_s=waited, start=time.time())
        try:
            yield held
        finally:
            held.end = time.time()
            self.cores.release()

    def _answer_repeat(self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> None:
        trial.set_user_attr("role", "search")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("repeat_of", earlier.number)
        trial.set_user_attr("config", earlier.user_attrs.get("config"))
        trial.set_user_attr("outcome", "repeat")
        trial.set_user_attr("reason", f"same configuration as trial {earlier.number}; not measured again")
        self.stats["repeats"] += 1
        if earlier.state == optuna.trial.TrialState.COMPLETE:
            self.study.tell(trial, earlier.value)
        else:
            self.study.tell(trial, state=earlier.state if earlier.state.is_finished() else optuna.trial.TrialState.FAIL)

    def fail_asked_trial(self) -> None:
        """Fail the last trial asked for if it is still RUNNING (the run stopped before telling it)."""
        if self.asked is None:
            return
        stored = self.study._storage.get_trial(self.asked._trial_id)
        if stored.state == optuna.trial.TrialState.RUNNING:
            self._tell_interrupted(self.asked)

    def _tell_interrupted(self, trial: optuna.Trial) -> None:
        trial.set_user_attr("outcome", Outcome.INTERRUPTED.value)
        trial.set_user_attr("reason", "stopped by the user (Ctrl-C)")
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _best_value(self) -> float | None:
        try:
            return self.study.best_value
        except ValueError:
            return None

    def _best_text(self) -> str:
        return format_figure(self._best_value(), self.space.objective.unit)

    def _describe(self, config: Mapping[str, Any]) -> str:
        shown = [n for n in self.space.searched(self.pins) if self.space.knobs[n].active(config)]
        return " ".join(f"{n}={config[n]}" for n in shown)


def summary_of(study: optuna.Study, space: SearchSpace, host: HostInfo) -> StudySummary:
    """The summary of a stored study (for commands that read a study without running it)."""
    return summarize_study(study, space, host)
