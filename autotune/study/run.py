"""One ``autotune run``: set up, search, confirm, profile, report (:func:`run_study` owns the flow)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from autotune.agreement import record_agreement_setup
from autotune.confirm import (
    CONFIRMATION_ATTR,
)
from autotune.console import console
from autotune.exits import Exit
from autotune.host import HostInfo
from autotune.measurer import Measurer
from autotune.report import (
    ReportError,
    print_summary,
    write_outputs,
    write_report,
)
from autotune.runner import TrialRunner
from autotune.space import SearchSpace
from autotune.study.loop import SearchLoop
from autotune.study.options import RunOptions
from autotune.study.setup import default_study_name, open_shared_study
from autotune.study.stages import (
    check_cores_free,
    check_report_dir,
    confirm_stage,
    host_calibration,
    profile_references,
)
from autotune.study.warm import applied, earlier_studies
from autotune.summary import StudySummary, summarize_study


def run_study(
    options: RunOptions,
    host: HostInfo,
    space: SearchSpace,
    pins: Mapping[str, Any],
    runner: TrialRunner | None = None,
    prepared: Mapping[str, Any] | None = None,
) -> int:
    """Run (or resume) a study and write its outputs.

    ``prepared`` is what the workload's prepare mode made for the output checks (the check weights, how
    long training them took): stored in the study so that the report says which weights were used.

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
    check_report_dir(report_dir)
    measurer = Measurer(space, host, data_dir=options.data_dir, timeout_s=options.trial_timeout_s,
                        memory_cap_mb=options.memory_cap_mb, wait=options.wait_for_cores,
                        runner=runner or TrialRunner())
    if not options.wait_for_cores:
        check_cores_free(measurer)
    study = open_shared_study(options, name, host, space, pins)
    record_agreement_setup(study, space, prepared or {})
    announce_warm_starts(study, space, host)
    started = time.monotonic()
    calibration = host_calibration(host, study)
    loop = SearchLoop(options, pins, study, measurer)
    try:
        interrupted = loop.run()
    except KeyboardInterrupt:  # Ctrl-C between two measurements (asking, sampling, storing)
        loop.fail_asked_trial()
        interrupted = True
    if not interrupted and options.confirm_repeats > 0:
        interrupted = confirm_stage(options, study, measurer)
    elif options.confirm_repeats <= 0 and study.user_attrs.get(CONFIRMATION_ATTR):
        study.set_user_attr(CONFIRMATION_ATTR, None)  # an older confirmation no longer covers the study
    summary = summarize_study(study, space, host, calibration)
    if options.profile and not interrupted and summary.best is not None:
        interrupted = profile_references(study, measurer, report_dir)
    loop.stats["elapsed_s"] = time.monotonic() - started
    if loop.guard is not None:
        loop.stats.update(references=loop.guard.stats.references, reference_s=loop.guard.stats.reference_seconds)
    if prepared and prepared.get("trained"):
        loop.stats["weights_training_s"] = float(prepared.get("seconds") or 0.0)
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
    return Exit.OK if summary.best is not None else Exit.FAILED


def announce_warm_starts(study: optuna.Study, space: SearchSpace, host: HostInfo) -> None:
    """Say what the study was warm-started from, or which earlier studies it could start from."""
    starts = applied(study)
    for start in starts:
        console.print(start.describe())
    if starts:
        return
    earlier = earlier_studies(study, space, host)
    if earlier:
        shown = "; ".join(e.describe() for e in earlier[:5]) + ("; ..." if len(earlier) > 5 else "")
        console.print(f"earlier studies of workload {space.workload} in this storage: {shown}. "
                      f"Start from one with --warm-start STUDY")


def summary_of(study: optuna.Study, space: SearchSpace, host: HostInfo) -> StudySummary:
    """The summary of a stored study (for commands that read a study without running it)."""
    return summarize_study(study, space, host)
