"""What a study found: the baseline / vendor / best summary, ``best.json`` and ``report.md``.

:func:`summarize_study` reads everything from the Optuna study (the one source of truth), so a report can
be rebuilt at any time from the storage alone; :func:`write_outputs` writes the files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from rich.table import Table

from autotune.console import console, format_rate
from autotune.errors import UserError
from autotune.host import HostInfo
from autotune.measure import bootstrap_ratio_ci
from autotune.protocol import SCHEMA_VERSION
from autotune.record import FIGURES
from autotune.space import SearchSpace

ROLES = ("baseline", "vendor_recommended", "best")
BEST_KIND = "autotune-best"


@dataclass(frozen=True)
class Speedup:
    """A throughput ratio with its 95% bootstrap interval."""

    value: float
    low: float
    high: float

    def text(self) -> str:
        """E.g. ``5.31x (4.90-5.70)``."""
        return f"{self.value:.2f}x ({self.low:.2f}-{self.high:.2f})"


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
    """

    study: str
    workload: str
    host: HostInfo
    configs: Mapping[str, dict[str, Any] | None]
    speedups: Mapping[str, Speedup | None]
    counts: Mapping[str, int]
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        """The best trial's record."""
        return self.configs.get("best")


def summarize_study(study: optuna.Study, space: SearchSpace, host: HostInfo) -> StudySummary:
    """Summarize a stored study."""
    trials = study.get_trials(deepcopy=False)
    ok = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and "repeat_of" not in t.user_attrs]
    configs: dict[str, dict[str, Any] | None] = {}
    for role in ("baseline", "vendor_recommended"):
        matching = [t for t in ok if t.user_attrs.get("role") == role]
        configs[role] = _record(matching[0]) if matching else None
    configs["best"] = _record(max(ok, key=lambda t: t.value)) if ok else None
    speedups = {
        "vs_baseline": _speedup(configs["best"], configs["baseline"]),
        "vs_vendor": _speedup(configs["best"], configs["vendor_recommended"]),
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
        workload=space.workload,
        host=host,
        configs=configs,
        speedups=speedups,
        counts=dict(counts),
        failures=failures,
        searched=space.searched(pins),
    )


def _record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"trial": trial.number, **trial.user_attrs}


def _speedup(faster: Mapping[str, Any] | None, slower: Mapping[str, Any] | None) -> Speedup | None:
    """Throughput ratio, per voxel, with an unpaired bootstrap interval over the step times."""
    if not faster or not slower:
        return None
    fast = [t / faster["voxels_per_step"] for t in faster["step_seconds"]]
    slow = [t / slower["voxels_per_step"] for t in slower["step_seconds"]]
    low, high = bootstrap_ratio_ci(slow, fast)
    return Speedup(value=faster["voxels_per_s"] / slower["voxels_per_s"], low=low, high=high)


def best_document(summary: StudySummary) -> dict[str, Any]:
    """The versioned ``best.json`` document."""
    return {
        "schema": SCHEMA_VERSION,
        "kind": BEST_KIND,
        "study": summary.study,
        "workload": summary.workload,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host_fingerprint": summary.host.fingerprint,
        "host": summary.host.to_dict(),
        **{role: _entry(summary.configs.get(role)) for role in ROLES},
        "speedup": {
            name: None if s is None else {"value": s.value, "ci95": [s.low, s.high]}
            for name, s in summary.speedups.items()
        },
        "trials": dict(summary.counts),
    }


def _entry(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    keys = ("trial", "role", "config", "env", "params", "cpus", "step_seconds", "effective", *FIGURES)
    return {key: record.get(key) for key in keys}


def write_outputs(summary: StudySummary, report_dir: Path) -> None:
    """Write ``best.json`` and ``report.md`` into ``report_dir`` (atomically, file by file).

    Raises:
        UserError: The folder cannot be written.
    """
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(report_dir / "best.json", json.dumps(best_document(summary), indent=2, sort_keys=True) + "\n")
        _atomic_write(report_dir / "report.md", markdown(summary))
    except OSError as exc:
        raise UserError(f"cannot write the report to {report_dir}: {exc.strerror or exc}") from None


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def table_rows(summary: StudySummary) -> list[list[str]]:
    """Rows of the end table: role, trial, knobs that differ from baseline, figures, speedup."""
    baseline = summary.configs.get("baseline")
    base_rate = baseline["voxels_per_s"] if baseline else None
    rows = []
    for role in ROLES:
        record = summary.configs.get(role)
        if record is None:
            rows.append([role, "-", "(no successful trial)", "-", "-", "-", "-"])
            continue
        speedup = "-" if not base_rate else f"{record['voxels_per_s'] / base_rate:.2f}x"
        rows.append([
            role,
            str(record["trial"]),
            knob_text(record["config"], baseline["config"] if baseline and role != "baseline" else None),
            format_rate(record["voxels_per_s"]),
            f"{record['latency_per_sample_s']:.3f} s",
            f"{record['gflops_per_s']:.1f}",
            speedup,
        ])
    return rows


def knob_text(config: Mapping[str, Any], relative_to: Mapping[str, Any] | None) -> str:
    """The knobs of ``config`` that differ from ``relative_to`` (all of them when None)."""
    keys = [k for k in config if relative_to is None or config[k] != relative_to.get(k)]
    return " ".join(f"{k}={config[k]}" for k in keys) or "(same as baseline)"


HEADERS = ["config", "trial", "knobs (vs baseline)", "voxels/s", "latency", "GFLOP/s", "speedup"]


def print_summary(summary: StudySummary, report_dir: Path, stats: Mapping[str, Any]) -> None:
    """Print the end table and where the outputs are."""
    table = Table(title=f"study {summary.study}")
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    for row in table_rows(summary):
        table.add_row(*row)
    console.print(table)
    for name, speedup in summary.speedups.items():
        if speedup is not None:
            console.print(f"best speedup {name.replace('_', ' ')}: {speedup.text()} (95% bootstrap interval)")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary.counts.items()))
    console.print(
        f"this run: {stats.get('run', 0)} trials measured, {stats.get('repeats', 0)} repeats answered from storage, "
        f"{stats.get('pruned', 0)} pruned (saved {stats.get('time_saved_s', 0.0):.0f}s), "
        f"{stats.get('elapsed_s', 0.0) / 60:.1f} min; study: {counts}"
    )
    console.print(f"wrote {report_dir / 'best.json'} and {report_dir / 'report.md'}")


def markdown(summary: StudySummary) -> str:
    """The short Markdown report."""
    host = summary.host
    lines = [
        f"# autotune report: {summary.study}",
        "",
        f"Workload `{summary.workload}` on {host.cpu_model} ({host.sockets} socket(s), "
        f"{host.physical_cores} cores, {host.logical_cpus} logical CPUs), host `{host.fingerprint}`; "
        f"TensorFlow {host.software.get('tensorflow')}, Keras {host.software.get('keras')}.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(summary)]
    lines.append("")
    for name, speedup in summary.speedups.items():
        if speedup is not None:
            lines.append(f"- Best speedup {name.replace('_', ' ')}: **{speedup.text()}** (95% bootstrap interval over step times).")
    lines.append(f"- Trials: {', '.join(f'{n} {k}' for k, n in sorted(summary.counts.items()))}.")
    lines.append(f"- Knobs searched: {', '.join(summary.searched)}.")
    if summary.failures:
        lines += ["", "## Failed and pruned trials", "", "| trial | outcome | reason |", "|---|---|---|"]
        # One table row per trial: a reason's own pipes and line breaks would split it.
        for number, outcome, reason in summary.failures:
            lines.append(f"| {number} | {outcome} | {' '.join(reason.replace('|', '/').split())} |")
    return "\n".join(lines) + "\n"


def load_best(path: Path) -> dict[str, Any]:
    """Read a ``best.json`` document.

    Raises:
        UserError: Missing, unreadable, not JSON, or not a best.json of this schema.
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
    if data.get("schema") != SCHEMA_VERSION:
        raise UserError(f"{path}: schema {data.get('schema')!r}, this autotune reads {SCHEMA_VERSION}")
    return data
