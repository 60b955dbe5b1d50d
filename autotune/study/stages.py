"""What runs around the search: checks before it, and the stages after it (calibration, confirmation, profiles)."""

from __future__ import annotations

import os
from pathlib import Path

import optuna

from autotune.calibrate import Calibration, calibrate, load_calibration
from autotune.confirm import (
    SELECT,
    Run,
    candidates_of,
    confirm,
    finalists_of,
)
from autotune.console import console, format_figure
from autotune.errors import UserError
from autotune.host import HostInfo
from autotune.measurer import Measurer
from autotune.study.options import RunOptions


def check_report_dir(report_dir: Path) -> None:
    """Refuse a report folder that cannot be made, before any trial runs (a full disk still fails later)."""
    existing = report_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    what = "it" if existing == report_dir else str(existing)
    if not existing.is_dir():
        raise UserError(f"--report-dir {report_dir}: {what} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--report-dir {report_dir}: {what} is not writable")


def check_cores_free(measurer: Measurer) -> None:
    """Raise CoresBusy at once when another worker measures here (``--no-wait``), before a study is opened."""
    with measurer.holding("checking the cores are free"):
        pass


def host_calibration(host: HostInfo, study: optuna.Study) -> Calibration | None:
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


def confirm_stage(options: RunOptions, study: optuna.Study, measurer: Measurer) -> bool:
    """Run the confirmation stage, holding the cores throughout; return True when it was interrupted."""
    space = measurer.space
    candidates = candidates_of(study, space, options.confirm_top)
    if not candidates:
        return False
    if not any(c.finalist for c in candidates):
        console.print("confirmation: skipped: no measured configuration met the output-agreement tolerance, "
                      "so there is no winner to confirm (the report lists each one's failed figure)")
        return False
    finalists = finalists_of(candidates)
    selecting = len(finalists) > 1 and options.confirm_select_rounds > 0
    if selecting:
        console.print(f"confirmation: {options.confirm_select_rounds} selection round(s) of "
                      f"{', '.join(c.label for c in finalists)} choose the winner; then")
    references = [c.label for c in candidates if c not in finalists]
    console.print(f"confirmation: {options.confirm_repeats} estimation rounds of the "
                  f"{'winner' if selecting else finalists[0].label}, {', '.join(references) or 'no reference'} "
                  "measure the speedups")

    def on_run(run: Run) -> None:
        spread = f"CV {run.cv:.1%}" if len(run.step_seconds) > 1 else f"{len(run.step_seconds)} timed step"
        figure = f"{format_figure(run.value, space.objective.unit)} ({spread})" if run.value else run.outcome
        stage = "selection" if run.stage == SELECT else "estimation"
        console.print(f"  {stage} round {run.round + 1}: {run.label}: {figure}")

    try:
        with measurer.holding("confirmation stage"):
            confirm(study, candidates, measurer, repeats=options.confirm_repeats,
                    select_rounds=options.confirm_select_rounds, on_run=on_run)
    except KeyboardInterrupt:
        return True
    return False


def profile_references(study: optuna.Study, measurer: Measurer, report_dir: Path) -> bool:
    """Profile the baseline and the best into ``report_dir``, holding the cores; return True when interrupted."""
    from autotune.profile import ProfileFailed, compare, profile_config, profile_document, write_profile
    from autotune.summary import load_study_config

    space, host = measurer.space, measurer.host
    found = {}
    try:
        with measurer.holding("profiling"):
            for which in ("baseline", "best"):
                try:
                    stored = load_study_config(study, which, space, host)
                    console.print(f"profiling the {which} (trial {stored.trial}) for the op-time breakdown")
                    breakdown = profile_config(measurer, stored.config)
                    write_profile(report_dir / f"profile-{which}.json", profile_document(stored, breakdown, host))
                    found[which] = breakdown
                except (ProfileFailed, UserError) as exc:
                    console.print(f"warning: no op-time breakdown of the {which}: {exc}")
        if len(found) == 2:
            console.print(compare(found["baseline"], found["best"]))
    except KeyboardInterrupt:
        return True
    return False
