"""The report's part on instances: the layout of the best, the other layout kind, the rules, infeasible
trials and the scaling curve.

:func:`layout_speedups` adds, for a study without confirmation rounds, the best's speedup over the best
configuration of the other layout kind (several instances against one) and over the best launcher rule,
from search trials (within one process each). With confirmation rounds the same two come paired from
:func:`autotune.confirm.decide` (``vs_layout``, ``vs_rule``). :func:`layout_sections` writes them out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna

from autotune.contract import Objective
from autotune.feasible import INFEASIBLE_ATTR
from autotune.host import format_cpu_list
from autotune.page import Section

if TYPE_CHECKING:
    from autotune.summary import Speedup, StudySummary

RULE_TEXT = {
    "throughput_rule": "throughput rule (one instance per NUMA node, all its cores)",
    "mlperf_rule": "MLPerf-style rule (4 cores per instance, at least one instance)",
}
SCALING_ATTR = "scaling"
"""Study user attribute: the scaling curve ``autotune scale`` measured (:mod:`autotune.scaling`)."""
_BAR_WIDTH = 30


def instances_of(record: Mapping[str, Any] | None) -> int:
    """How many instances a trial record ran (1 for one process, or a record from before instances)."""
    layout = (record or {}).get("instances")
    return int(layout.get("instances", 1)) if isinstance(layout, dict) else 1


def layout_text(record: Mapping[str, Any] | None) -> str:
    """``2 x 1 cores (CPUs 0 | 1)``, ``1 process on CPUs 0-1`` or ``1 process, not pinned``."""
    layout = (record or {}).get("instances")
    if isinstance(layout, dict):
        cpus = " | ".join(format_cpu_list(c) for c in layout.get("cpus", []))
        return f"{layout.get('instances')} x {layout.get('cores_per_instance')} cores (CPUs {cpus})"
    cpus = (record or {}).get("cpus")
    return f"1 process on CPUs {format_cpu_list(cpus)}" if cpus else "1 process, not pinned"


def layout_speedups(
    best: Mapping[str, Any] | None,
    feasible: Sequence[optuna.trial.FrozenTrial],
    objective: Objective,
    record: Callable[[optuna.trial.FrozenTrial], dict[str, Any]],
    speedup: Callable[..., Speedup | None],
) -> dict[str, Speedup | None]:
    """``vs_layout`` and ``vs_rule`` of the best from search trials, where the study has them."""
    if best is None:
        return {}
    ranked = sorted(feasible, key=lambda t: t.value, reverse=objective.maximize)
    found: dict[str, Speedup | None] = {}
    several = instances_of(best) > 1
    other = next((t for t in ranked if (instances_of(t.user_attrs) > 1) != several), None)
    if other is not None:
        found["vs_layout"] = speedup(best, record(other), objective)
    rule = next((t for t in ranked if t.user_attrs.get("role") in RULE_TEXT and t.number != best.get("trial")), None)
    if rule is not None:
        found["vs_rule"] = speedup(best, record(rule), objective)
    return found


def layout_sections(study: optuna.Study, summary: StudySummary) -> list[Section]:
    """The report sections on instances, rules, infeasible trials and the scaling curve (those that apply)."""
    sections = []
    facts = _layout_facts(study, summary)
    if facts:
        sections.append(Section(title="Instances and the launchers' rules", text=facts, bullets=True))
    infeasible = [(t.number, str(t.user_attrs[INFEASIBLE_ATTR])) for t in study.get_trials(deepcopy=False)
                  if t.user_attrs.get(INFEASIBLE_ATTR)]
    if infeasible:
        bound = study.user_attrs.get("max_latency_s")
        sections.append(Section(
            title="Infeasible trials" + (f" (--max-latency {bound:g} s)" if bound else ""),
            text=["Measured and stored, never a finalist, winner or export."],
            headers=["trial", "why"], rows=[[str(n), why] for n, why in infeasible]))
    curve = study.user_attrs.get(SCALING_ATTR)
    if curve:
        sections.append(scaling_section(curve, summary.objective))
    return sections


def _layout_facts(study: optuna.Study, summary: StudySummary) -> list[str]:
    best = summary.best
    roles = {t.user_attrs.get("role"): t for t in study.get_trials(deepcopy=False)}
    same = study.user_attrs.get("same_configuration") or {}
    if best is None or not (instances_of(best) > 1 or any(r in roles or r in same for r in RULE_TEXT)):
        return []
    facts = [f"The best runs {layout_text(best)} (trial {best.get('trial')})."]
    if best.get("numa_note"):
        facts.append(f"Note: {best['numa_note']}.")
    layout = summary.speedups.get("vs_layout")
    if layout is not None:
        other = _other_label(layout)
        found = next((t for t in study.get_trials(deepcopy=False)
                      if other in (t.user_attrs.get("role"), f"trial {t.number}")), None)
        kind = "one instance" if instances_of(best) > 1 else "several instances"
        shown = f"{other}, {layout_text(found.user_attrs)}" if found is not None else other
        # "won" only when the interval says so; an interval holding 1 is a tie at this level
        verdict = "won against" if layout.low > 1 else "lost against" if layout.high < 1 else (
            "was not distinguishable (the interval holds 1) from")
        facts.append(f"{layout_text(best).split(' (')[0]} {verdict} the best with {kind} ({shown}): "
                     f"**{layout.text()}**; {layout.basis}.")
    for rule, text in RULE_TEXT.items():
        if rule in same:
            facts.append(f"The {text} resolves to the `{same[rule]}` configuration on this host: measured once.")
        elif rule in roles:
            trial = roles[rule]
            figure = "failed" if trial.value is None else f"{trial.value:.4g} {summary.objective.unit}"
            facts.append(f"The {text}: {layout_text(trial.user_attrs)}, trial {trial.number}, {figure}.")
    rule = summary.speedups.get("vs_rule")
    if rule is not None:
        facts.append(f"The search beat the best rule by **{rule.text()}**; {rule.basis}.")
    return facts


def _other_label(speedup: Speedup) -> str:
    labels = speedup.runs.get("labels") or []
    if len(labels) == 2:
        return str(labels[1])
    trials = speedup.runs.get("trials") or []
    return f"trial {trials[1]}" if len(trials) == 2 else "the other layout"


def scaling_section(curve: Mapping[str, Any], objective: Objective) -> Section:
    """The scaling curve as a table with a bar per point (self-contained in both Markdown and HTML)."""
    points = [p for p in curve.get("points", []) if isinstance(p, dict)]
    top = max((p.get("value") or 0.0 for p in points), default=0.0) or 1.0
    rows = []
    for point in points:
        value = point.get("value")
        bar = "█" * round(_BAR_WIDTH * value / top) if value else ""
        shown = "-" if value is None else f"{value:.4g}"
        rows.append([str(point.get("cores")), point.get("layout", ""), shown, bar, point.get("outcome", "")])
    text = [f"Throughput of the best configuration (trial {curve.get('trial')}) against the physical cores it uses, "
            "one instance and several of one core each, each point one fresh measurement "
            f"(`autotune scale`). Where a row adds cores but not {objective.name}, adding cores stopped paying."]
    return Section(title="Scaling curve", text=text,
                   headers=["cores", "layout", objective.label, "", "outcome"], rows=rows)
