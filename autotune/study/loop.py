"""The search loop: ask Optuna for a trial, measure it in a fresh process, tell Optuna, until the budget ends.

Trials run one at a time on this host's cores (:meth:`autotune.measurer.Measurer.holding`); every trial's
record is stored in its user attributes before it is told, so nothing measured is lost. The loop keeps
back the time the end-of-run stages need (:meth:`SearchLoop.reserve_seconds`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import time
from collections.abc import Iterator, Mapping
from typing import Any

import optuna
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autotune.agreement import CONSTRAINT, AgreementGuard, violation
from autotune.confirm import (
    estimate_seconds,
    rerun_seconds,
)
from autotune.console import console, format_figure
from autotune.errors import UserError
from autotune.feasible import INFEASIBLE_ATTR
from autotune.lock import CoresBusy
from autotune.measurer import Held, Measurer
from autotune.protocol import Outcome
from autotune.pruning import BestFractionPruner, best_step_seconds, warmup_too_slow
from autotune.record import trial_record
from autotune.study.options import RunOptions

# After this many consecutive repeats of measured configurations the space is taken as exhausted.
MAX_CONSECUTIVE_REPEATS = 25


class SearchLoop:
    """The ask -> run -> tell loop with its progress display.

    Life cycle: :func:`autotune.study.run.run_study` builds it on an opened study and a
    :class:`~autotune.measurer.Measurer`, calls :meth:`run` once, reads :attr:`stats` for the summary, and
    calls :meth:`fail_asked_trial` if Ctrl-C came between two measurements.
    """

    def __init__(
        self, options: RunOptions, pins: Mapping[str, Any], study: optuna.Study, measurer: Measurer
    ) -> None:
        self.options = options
        self.measurer = measurer
        self.space = measurer.space
        self.pins = pins
        self.study = study
        self.stats = {"run": 0, "repeats": 0, "pruned": 0, "failed": 0, "inaccurate": 0, "time_saved_s": 0.0,
                      "elapsed_s": 0.0, "check_s": 0.0}
        self.seen = self._measured()
        self.search_walls: list[float] = []  # wall seconds of the search trials this run measured
        self.asked: optuna.Trial | None = None
        self.guard = AgreementGuard(study, measurer, pins, self.space.agreement) if self.space.agreement else None

    def _measured(self) -> dict[tuple, optuna.trial.FrozenTrial]:
        seen = {}
        for trial in self.study.get_trials(deepcopy=False):
            config = trial.user_attrs.get("config")
            if (
                config
                and trial.state.is_finished()
                and "repeat_of" not in trial.user_attrs
                and trial.user_attrs.get("outcome") != Outcome.INTERRUPTED.value  # says nothing of the config
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

    def reserve_seconds(self) -> float:
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
            while done < self.options.trials and time.monotonic() < deadline - self.reserve_seconds():
                # A trial that starts must end before the confirmation stage's share: not one typical
                # search trial of this run more than the budget left.
                left = deadline - self.reserve_seconds() - time.monotonic()
                typical = statistics.median(self.search_walls) if self.search_walls else 0.0
                if typical > left:
                    progress.console.print(f"{left:.0f}s of the search budget left, less than a typical search "
                                           f"trial of this run ({typical:.0f}s): ending the search")
                    break
                if self._grid_exhausted():
                    progress.console.print("every grid point was measured: stopping the search")
                    break
                remaining = deadline - self.reserve_seconds() - time.monotonic()
                trial = self.asked = self.study.ask()
                role = trial.user_attrs.get("role", "search")
                try:
                    config = self.space.suggest(trial, self.pins)
                    if role in self.space.roles():
                        config = self.space.reference(role, self.pins)
                except UserError as exc:  # a grid point the host cannot hold (more instances than cores)
                    self._tell_unusable(trial, role, str(exc))
                    done += 1
                    progress.advance(task)
                    continue
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

        yardstick: dict[int, float | None] = {}

        def on_running(steps: list[float], setup: Mapping[str, Any]) -> bool:
            # The running step's time so far is a lower bound of its time, so the median with it bounds the
            # trial's figure: once that bound is clearly worse than the best, no ending can save the trial.
            pruner = self.study.pruner
            work = setup.get("work_per_step")
            if role != "search" or not self.options.prune or not isinstance(pruner, BestFractionPruner):
                return False
            if not isinstance(work, int | float) or work <= 0 or len(steps) < pruner.n_warmup_steps:
                return False
            if len(steps) not in yardstick:  # asked once per step, not at every poll
                yardstick[len(steps)] = pruner.best(self.study)
            bound = objective.running(float(work), statistics.median(steps))
            if not pruner.beaten(bound, yardstick[len(steps)], objective.maximize):
                return False
            trial.report(bound, len(steps) - 1)
            return True

        verdict = None
        with self._cores(trial, progress, task) as held:
            wants = self.guard is not None and self.guard.wants_outputs
            spec, outcome = self.measurer.run(config, on_step=on_step, on_wait=on_wait, on_running=on_running,
                                              outputs=wants)
            if self.guard is not None and outcome.outcome is Outcome.OK and outcome.result is not None:
                progress.update(task, status="judging its outputs against the reference")
                verdict = self.guard.judge(config, outcome.result.outputs, outcome.result.figures)
        record = trial_record(config, spec, outcome, self.measurer.host)
        kind = "pruned" if outcome.outcome is Outcome.PRUNED else "ok" if outcome.outcome is Outcome.OK else "failed"
        self.stats[f"{kind}_wall_s"] = self.stats.get(f"{kind}_wall_s", 0.0) + outcome.wall_seconds
        if role == "search":
            self.search_walls.append(outcome.wall_seconds)
        if verdict is not None:
            record["agreement"] = verdict.to_dict()
            self.stats["check_s"] += _check_seconds(record)
        record["cores_wait_s"] = round(held.waited_s, 3)
        record["cores_held"] = [round(held.start, 3), round(held.end, 3)]
        steps_seen = [*outcome.step_seconds, *([outcome.running_seconds] if outcome.running_seconds else [])]
        if outcome.outcome is Outcome.PRUNED and steps_seen:
            # A step stopped while running counts with the time it had run: a lower bound of the saving.
            median = statistics.median(steps_seen)
            planned = outcome.planned_steps or len(steps_seen)
            saved = max(0, planned - len(steps_seen)) * median
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
            if verdict is not None:
                trial.set_constraint(CONSTRAINT, violation(verdict))
            if verdict is not None and not verdict.ok:
                record["outcome"], record["reason"] = Outcome.INACCURATE.value, verdict.reason
                trial.set_user_attr("outcome", record["outcome"])
                trial.set_user_attr("reason", record["reason"])
                self.stats["inaccurate"] += 1
                line = f"trial {trial.number}: {Outcome.INACCURATE.value}: {verdict.reason}"
            if (excess := self._latency_excess(record)) is not None:
                trial.set_constraint("latency", excess)
                if excess > 0:
                    why = (f"{self.space.contract.latency} {record[self.space.contract.latency]:.4g} s is over "
                           f"--max-latency {self.options.max_latency_s:g} s")
                    trial.set_user_attr(INFEASIBLE_ATTR, why)
                    trial.set_user_attr("reason", why)
                    line += f" (infeasible: {why})"
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

    def _latency_excess(self, record: Mapping[str, Any]) -> float | None:
        """Seconds the trial's latency figure is over ``--max-latency`` (negative: under), or None without a bound."""
        bound, contract = self.options.max_latency_s, self.space.contract
        if bound is None or contract is None or contract.latency is None:
            return None
        latency = record.get(contract.latency)
        if not isinstance(latency, int | float):
            return None
        return float(latency) - bound

    def _tell_unusable(self, trial: optuna.Trial, role: str, why: str) -> None:
        trial.set_user_attr("role", role)
        trial.set_user_attr("outcome", Outcome.BAD_INPUT.value)
        trial.set_user_attr("reason", f"not measured: {why}")
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.stats["failed"] += 1

    @contextlib.contextmanager
    def _cores(self, trial: optuna.Trial, progress: Progress, task: Any) -> Iterator[Held]:
        """Hold this host's cores while the trial measures; yield the wait and the held span."""
        note = f"trial {trial.number} of study {self.study.study_name}"

        def on_busy(holder: str) -> None:
            message = f"waiting for cores: another autotune worker is measuring ({holder})"
            progress.update(task, status=message)
            progress.console.print(f"trial {trial.number}: {message}")

        try:
            with self.measurer.holding(note, on_busy) as held:
                yield held
        except CoresBusy as exc:
            if not self.study._storage.get_trial(trial._trial_id).state.is_finished():
                trial.set_user_attr("outcome", Outcome.INTERRUPTED.value)
                trial.set_user_attr("reason", f"not measured: another autotune worker was measuring "
                                              f"({self.measurer.cores.holder()})")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise exc

    def _answer_repeat(self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> None:
        trial.set_user_attr("role", "search")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("repeat_of", earlier.number)
        trial.set_user_attr("config", earlier.user_attrs.get("config"))
        trial.set_user_attr("outcome", "repeat")
        trial.set_user_attr("reason", f"same configuration as trial {earlier.number}; not measured again")
        self.stats["repeats"] += 1
        for name, value in earlier.constraints.items():  # an inaccurate configuration stays infeasible
            trial.set_constraint(name, value)
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
            return self.study.best_value  # feasible trials only, when any has constraints
        except ValueError:
            return None

    def _best_text(self) -> str:
        return format_figure(self._best_value(), self.space.objective.unit)

    def _describe(self, config: Mapping[str, Any]) -> str:
        shown = [n for n in self.space.searched(self.pins) if self.space.knobs[n].active(config)]
        return " ".join(f"{n}={config[n]}" for n in shown)


def _check_seconds(record: Mapping[str, Any]) -> float:
    """Seconds the trial spent computing its check outputs, as the workload reported them."""
    value = record.get("check_seconds", (record.get("effective") or {}).get("check_seconds"))
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
