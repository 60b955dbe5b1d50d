"""The flat record of one measured configuration, as stored, printed and exported.

A record is plain JSON-ready data, one per trial (hyperfine keeps one flat record per benchmark): the
configuration, how it was launched, how it ended, and its figures. ``autotune bench --json`` prints it,
the study stores it in the trial's user attributes, and reports read it back.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from autotune.host import HostInfo
from autotune.launch import knob_params
from autotune.layout import membind_note
from autotune.measure import spread_warning, summarize
from autotune.protocol import SCHEMA_VERSION, Outcome
from autotune.runner import TrialOutcome, TrialSpec

# Figures every trial has, whatever its workload: of its timed steps and of its process.
FIGURES = (
    "median_step_s",
    "mad_step_s",
    "cv",
    "work_per_step",
    "peak_rss_mb",
    "setup_seconds",
)
# Numbers in a record that are not figures of the configuration (for records that predate figure_names).
_NOT_FIGURES = {"schema", "wall_seconds", "cores_wait_s", "time_saved_s", "trial", "instances", "numa_note",
                *FIGURES}


def trial_record(
    config: Mapping[str, Any], spec: TrialSpec, outcome: TrialOutcome, host: HostInfo
) -> dict[str, Any]:
    """Build the record of one trial.

    Args:
        config: The complete configuration (every knob).
        spec: How the trial was launched.
        outcome: How it ended.
        host: The host it ran on.
    """
    result = outcome.result
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "workload": spec.config.workload,
        "outcome": outcome.outcome.value,
        "reason": outcome.reason,
        "config": dict(config),
        "env": dict(spec.env),
        "params": knob_params(spec),
        "cpus": list(spec.cpus) if spec.cpus is not None else None,
        "instances": spec.layout.to_dict() if spec.layout is not None else None,
        "instance_figures": [dict(entry) for entry in outcome.instances],
        "numa_note": membind_note(spec.layout) if spec.layout is not None else None,
        "host": socket.gethostname(),
        "host_fingerprint": host.fingerprint,
        "step_seconds": list(result.step_seconds if result else outcome.step_seconds),
        "warmup_seconds": list(result.warmup_seconds if result else outcome.warmup_seconds),
        "running_step_s": outcome.running_seconds,
        "wall_seconds": outcome.wall_seconds,
        "effective": result.effective if result else {},
        "stderr_tail": "" if outcome.outcome is Outcome.OK else outcome.stderr_tail,
    }
    for name in FIGURES:
        record[name] = getattr(result, name) if result else None
    figures = dict(result.figures) if result else {}
    record["figure_names"] = sorted(figures)
    record.update(figures)
    steps = record["step_seconds"]
    summary = summarize(steps) if steps else None
    record["outlier_steps"] = list(summary.outliers) if summary else []
    record["warning"] = spread_warning(summary) if summary and result else None
    if result is None:
        record["peak_rss_mb"] = outcome.peak_rss_mb
    return record


def figures_of(record: Mapping[str, Any]) -> dict[str, float]:
    """The workload's own figures in a record (its objective and extras), by name.

    Records written before the figures were listed in ``figure_names`` (protocol schema 1) give every
    number that is not a step or process figure.
    """
    names = record.get("figure_names")
    if names is None:
        names = [k for k, v in record.items()
                 if isinstance(v, int | float) and not isinstance(v, bool) and k not in _NOT_FIGURES]
    return {name: record[name] for name in names if isinstance(record.get(name), int | float)}
