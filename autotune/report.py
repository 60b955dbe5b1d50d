"""How a study's findings are shown: the end table, ``best.json``, ``report.md`` and ``report.html``.

The figures come from :func:`autotune.summary.summarize_study` (read from the Optuna study alone, so a
report can be rebuilt at any time from the storage); this module renders them and writes the files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from rich.table import Table

from autotune import agreement_report
from autotune.console import console, format_figure
from autotune.errors import UserError
from autotune.exits import Exit
from autotune.files import atomic_write
from autotune.intervals import percent
from autotune.layout_report import layout_sections
from autotune.page import Section, to_html, to_markdown
from autotune.plots import IMPORTANCE_METHOD, Bar, Figures, draw, plotly_js
from autotune.summary import (
    PAIRED,
    ROLES,
    WITHIN_PROCESS_CAVEAT,
    Speedup,
    StudySummary,
    best_document,
    knob_active,
    role_figures,
    role_speedup,
)

NO_ACCURATE_TEXT = ("No configuration met the output-agreement tolerance: there is no winner to confirm or export. "
                    "The baseline and vendor figures above are as measured; loosen a bound with --tolerance "
                    "(another study) if the one in force is stricter than the job needs.")
# Exit status when the report cannot be written (a full disk): EX_IOERR from sysexits.h. Not 2: the
# study did run, and status 2 promises that bad input changed nothing.
EXIT_REPORT_NOT_WRITTEN = Exit.REPORT_NOT_WRITTEN


class ReportError(UserError):
    """The report folder or one of its files cannot be written; the message is one line."""

    exit_status = EXIT_REPORT_NOT_WRITTEN


def search_time_text(spent: Mapping[str, float]) -> str:
    """Where the search's trial time went, e.g. ``search trial time 687 s: 267 s completed, 420 s (61%) pruned``."""
    total = sum(spent.values())
    if total <= 0:
        return ""
    parts = [f"{spent.get('completed', 0.0):.0f} s completed"]
    for kind in ("pruned", "failed"):
        if spent.get(kind):
            parts.append(f"{spent[kind]:.0f} s ({spent[kind] / total:.0%}) {kind}")
    return f"search trial time {total:.0f} s (references included): " + ", ".join(parts)


def write_outputs(summary: StudySummary, report_dir: Path) -> None:
    """Write ``best.json`` and ``report.md`` into ``report_dir`` (atomically, file by file).

    Raises:
        ReportError: The folder cannot be written.
    """
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(report_dir / "best.json", json.dumps(best_document(summary), indent=2, sort_keys=True) + "\n")
        atomic_write(report_dir / "report.md", markdown(summary))
    except OSError as exc:
        raise ReportError(f"cannot write the report to {report_dir}: {exc.strerror or exc}") from None


def table_rows(summary: StudySummary) -> list[list[str]]:
    """Rows of the end table: role, trial, knobs that differ from baseline, figures, speedup."""
    baseline = summary.configs.get("baseline")
    names = figure_columns(summary)
    rows = []
    for role in ROLES:
        record = summary.configs.get(role)
        values = role_figures(summary, role)
        if record is None or values is None:
            rows.append([role, "-", _missing(summary, role), *["-"] * len(names), "-", "-",
                         *(["-"] if summary.agreement else [])])
            continue
        share = values["share_of_peak"]
        speedup = values["speedup_vs_baseline"]
        rows.append([
            role,
            str(record["trial"]),
            knob_text(record["config"], baseline["config"]) if baseline and role != "baseline"
            else knob_text({k: record["config"][k] for k in summary.searched
                            if k in record["config"] and knob_active(summary, k, record["config"])}, None),
            *(format_figure(values.get(name)) for name in names),
            "-" if share is None else f"{share:.1%}",
            "1.00x" if role == "baseline" else "-" if speedup is None else f"{speedup:.2f}x",
            *([agreement_report.cell(record)] if summary.agreement else []),
        ])
    return rows


def figure_columns(summary: StudySummary) -> list[str]:
    """The figures of the end table: the objective, then the workload's declared extras."""
    return [summary.objective.name, *(n for n in summary.figure_units if n != summary.objective.name)]


def headers(summary: StudySummary) -> list[str]:
    """Column titles of the end table, each figure with its unit."""
    units = {**summary.figure_units, summary.objective.name: summary.objective.unit}
    return ["config", "trial", "knobs (vs baseline)",
            *(_column_title(name, units.get(name, "")) for name in figure_columns(summary)), "of peak", "speedup",
            *(["outputs vs reference"] if summary.agreement else [])]


def _column_title(name: str, unit: str) -> str:
    """``samples/s`` for a rate, ``latency per sample (s)`` otherwise."""
    if unit.endswith("/s") and unit != "s":
        return unit
    words = name.removesuffix("_s").replace("_", " ")
    return f"{words} ({unit})" if unit else words


def knob_text(config: Mapping[str, Any], relative_to: Mapping[str, Any] | None) -> str:
    """The knobs of ``config`` that differ from ``relative_to`` (all of them when None)."""
    keys = [k for k in config if relative_to is None or config[k] != relative_to.get(k)]
    return " ".join(f"{k}={config[k]}" for k in keys) or "(same as baseline)"


def print_summary(
    summary: StudySummary, report_dir: Path, stats: Mapping[str, Any], *, written: bool = True
) -> None:
    """Print the end table and, when ``written``, where the outputs are."""
    table = Table(title=f"study {summary.study}")
    for header in headers(summary):
        table.add_column(header, overflow="fold")
    for row in table_rows(summary):
        table.add_row(*row)
    console.print(table)
    for name, speedup in summary.speedups.items():
        if speedup is not None:
            console.print(f"best speedup {name.replace('_', ' ')}: {speedup.text()}; {speedup.basis}")
    console.print(estimand(summary))
    if summary.best is None and summary.inaccurate:
        console.print(NO_ACCURATE_TEXT)
    if line := agreement_report.run_line(stats):
        console.print(line)
    run_spent = {"completed": stats.get("ok_wall_s", 0.0), "pruned": stats.get("pruned_wall_s", 0.0),
                 "failed": stats.get("failed_wall_s", 0.0)}
    if text := search_time_text(run_spent):
        console.print(f"this run's {text}")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary.counts.items()))
    console.print(
        f"this run: {stats.get('run', 0)} trials measured, {stats.get('repeats', 0)} repeats answered from storage, "
        f"{stats.get('pruned', 0)} pruned (saved {stats.get('time_saved_s', 0.0):.0f}s), "
        f"{stats.get('elapsed_s', 0.0) / 60:.1f} min; study: {counts}"
    )
    if written:
        console.print(f"wrote {report_dir / 'best.json'} and {report_dir / 'report.md'}")


def estimand(summary: StudySummary) -> str:
    """What the speedups estimate, in words."""
    if summary.confirmation is not None:
        return (f"What is estimated: the median over rounds of the paired ratio of {summary.objective.name} "
                "(how many times better) on this host; each "
                "round ran the configurations back to back in fresh processes, so drift common to a round cancels. "
                "An interval's level is the probability that it covers that median, exact for its number of rounds "
                "(distribution-free).")
    return ("No confirmation rounds ran: each speedup is the ratio of two search trials, and its interval covers "
            "only the step-to-step spread inside those two processes, not the larger spread between processes "
            "(run with --confirm-repeats 5 for an interval that covers re-runs).")


def report_sections(
    summary: StudySummary, figures: Figures | None = None, extra: Sequence[Section] = ()
) -> list[Section]:
    """The content of the report, in order; ``extra`` (e.g. the op-time breakdown) goes before failures."""
    host = summary.host
    opening = Section(
        title="",
        text=[
            f"Workload `{summary.workload}` on {host.cpu_model} ({host.sockets} socket(s), "
            f"{host.physical_cores} cores, {host.logical_cpus} logical CPUs, "
            f"{host.memory_bytes / 2**30:.0f} GiB), host `{host.fingerprint}`; "
            f"TensorFlow {host.software.get('tensorflow')}, Keras {host.software.get('keras')}, "
            f"oneDNN {host.software.get('onednn')}. ISA: "
            + (" ".join(k for k, v in host.isa.items() if v) or "-")
            + _peaks_text(summary),
        ],
        headers=headers(summary),
        rows=table_rows(summary),
    )
    facts = [
        f"Best speedup {name.replace('_', ' ')}: **{speedup.text()}**; {speedup.basis}."
        for name, speedup in summary.speedups.items() if speedup is not None
    ]
    facts.append(estimand(summary))
    facts.append(f"Trials: {', '.join(f'{n} {k}' for k, n in sorted(summary.counts.items()))}.")
    if spent := search_time_text(summary.time_by_outcome):
        facts.append(spent[0].upper() + spent[1:] + ".")
    facts.append(f"Knobs searched: {', '.join(summary.searched) or 'none'}.")
    if summary.warm_starts:
        from autotune.study.warm import WarmStart  # the study package imports this module

        for stored in summary.warm_starts:
            line = WarmStart.from_dict(stored).describe()
            facts.append(line[0].upper() + line[1:] + ".")
    if summary.best is None and summary.inaccurate:
        facts.insert(0, NO_ACCURATE_TEXT)
    sections = [opening, Section(title="", text=facts, bullets=True)]
    sections.append(_changes(summary))
    sections.append(agreement_report.section(summary.agreement, summary.configs, summary.inaccurate))
    if figures is not None:
        sections.append(_importance(figures))
        shown = [t for t in figures.html if t not in ("Knob importances",)]
        sections.append(Section(
            title="Figures",
            text=[f"{t}: not drawn ({why})." for t, why in figures.skipped.items()],
            figures=shown,
            bullets=True,
        ))
    sections += list(extra)
    if summary.failures:
        sections.append(Section(
            title="Failed and pruned trials",
            headers=["trial", "outcome", "reason"],
            rows=[[str(n), o, r] for n, o, r in summary.failures],
        ))
    return sections


def _missing(summary: StudySummary, role: str) -> str:
    if role == "best" and summary.inaccurate:
        return "(none within the output-agreement tolerance)"
    return "(no successful trial)"


def _peaks_text(summary: StudySummary) -> str:
    if not summary.peak_gflops_per_s:
        return ". No GEMM peak was measured (`autotune host --calibrate`)."
    text = f"; GEMM peak {summary.peak_gflops_per_s:.0f} GFLOP/s in float32"
    if summary.peak_bf16_gflops_per_s:
        text += f", {summary.peak_bf16_gflops_per_s:.0f} in bfloat16"
    return text + " (`of peak` compares each configuration with the peak of its precision)."


def _changes(summary: StudySummary) -> Section:
    best, baseline = summary.best, summary.configs.get("baseline")
    if best is None or baseline is None:
        return Section(title="What the winner changed", text=["No successful baseline and best trial to compare."])
    rows = [[k, str(baseline["config"].get(k)), str(v)] for k, v in best["config"].items()
            if baseline["config"].get(k) != v]
    return Section(title="What the winner changed", text=["Knobs whose value differs from the baseline."],
                   headers=["knob", "baseline", "best"], rows=rows or [["(none)", "", ""]])


def _importance(figures: Figures) -> Section:
    if not figures.importances:
        why = figures.skipped.get("Knob importances", "not computed")
        return Section(title="Knob importance", text=[f"Not available: {why}."])
    text = [f"How much each knob's values among the best completed trials differ from its values among all "
            f"of them ({IMPORTANCE_METHOD}). Pruned and failed trials are not in it, and they are often the slow "
            "configurations, so a knob that separates slow from fast (the layout, oneDNN) can rank low "
            "here: read it as what mattered among the configurations that ran in full."]
    if figures.importance_caveats:
        text.append("The evaluator's caveats: " + "; ".join(figures.importance_caveats) + ".")
    return Section(
        title="Knob importance",
        text=text,
        headers=["knob", "importance"],
        rows=[[k, f"{v:.2f}"] for k, v in figures.importances.items()],
        figures=["Knob importances"],
    )


def breakdown_sections(summary: StudySummary, report_dir: Path) -> list[Section]:
    """The op-time breakdown of the baseline and the best, from ``profile-*.json`` in ``report_dir``.

    A profile of a trial that is no longer the study's baseline or best is left out and said so.
    """
    from autotune.profile import category_rows, compare, load_profile, op_rows

    found = {}
    notes = []
    for role in ("baseline", "best"):
        path = report_dir / f"profile-{role}.json"
        if not path.exists():
            notes.append(f"No profile of the {role} (`autotune profile --study {summary.study} --config {role}`).")
            continue
        try:
            trial = json.loads(path.read_text()).get("trial")
            breakdown = load_profile(path)
        except (UserError, OSError, ValueError, AttributeError) as exc:
            notes.append(f"{path.name} is unreadable: {exc}.")
            continue
        record = summary.configs.get(role)
        if record is not None and trial != record.get("trial"):
            notes.append(f"{path.name} profiled trial {trial}, but the {role} is now trial {record.get('trial')}: "
                         f"profile it again.")
            continue
        found[role] = breakdown
    if not found:
        return [Section(title="Op-time breakdown", text=notes)] if notes else []
    text = [compare(found["baseline"], found["best"])] if len(found) == 2 else []
    text.append("Time by op type while the configuration ran under the TensorFlow profiler (self time of each op, "
                "summed over threads; share of all op time).")
    header, rows = category_rows(found)
    sections = [Section(title="Op-time breakdown", text=text + notes, headers=header, rows=rows)]
    for role, breakdown in found.items():
        sections.append(Section(title=f"Top ops: {role}", headers=["op", "type", "ms/step", "share"],
                                rows=op_rows(breakdown)))
    return sections


def markdown(summary: StudySummary, figures: Figures | None = None, extra: Sequence[Section] = ()) -> str:
    """The Markdown report."""
    return to_markdown(f"autotune report: {summary.study}", report_sections(summary, figures, extra),
                       figures.png if figures else {})


def write_report(
    summary: StudySummary, study: optuna.Study, report_dir: Path, extra: Sequence[Section] = ()
) -> None:
    """Write the full report: ``best.json``, ``report.md`` with PNG figures, self-contained ``report.html``.

    Raises:
        ReportError: The folder cannot be written.
    """
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot write the report to {report_dir}: {exc.strerror or exc}") from None
    bars = {"baseline": Bar(1.0)}
    notes = []
    for role in ("vendor_recommended", "best"):
        speedup = role_speedup(summary, role)
        if speedup is not None:
            bars[role] = Bar(speedup.value, speedup.low, speedup.high)
            notes.append(chart_note(summary, speedup))
    try:
        drawn = draw(study, report_dir, bars if len(bars) > 1 else {}, "; ".join(dict.fromkeys(notes)),
                     summary.metric_name)
    except UserError as exc:  # a figure could not be saved
        raise ReportError(str(exc)) from None
    sections = report_sections(summary, drawn, [*breakdown_sections(summary, report_dir),
                                                *layout_sections(study, summary), *extra])
    speedup_chart = Section(title="Speedup", figures=["Speedup over the baseline"])
    sections.insert(3, speedup_chart)
    title = f"autotune report: {summary.study}"
    try:
        atomic_write(report_dir / "best.json", json.dumps(best_document(summary), indent=2, sort_keys=True) + "\n")
        atomic_write(report_dir / "report.md", to_markdown(title, sections, drawn.png))
        atomic_write(report_dir / "report.html", to_html(title, sections, drawn.html, plotly_js()))
    except OSError as exc:
        raise ReportError(f"cannot write the report to {report_dir}: {exc.strerror or exc}") from None


def chart_note(summary: StudySummary, speedup: Speedup) -> str:
    """What the chart's error bars are, e.g. ``bars: 93.8% interval, 5 paired rounds``."""
    level = "" if speedup.level is None else ("at least " if speedup.at_least else "") + percent(speedup.level) + " "
    if speedup.scope == PAIRED:
        rounds = len(speedup.runs.get("rounds", ()))
        return f"bars: {level}interval, {rounds} paired round{'s' * (rounds != 1)}"
    return f"bars: {level}interval {WITHIN_PROCESS_CAVEAT}"


