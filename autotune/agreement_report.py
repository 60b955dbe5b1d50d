"""How the report shows output agreement: a column of the end table, a section, a line of the run summary.

The figures come from each trial's record (``agreement``: :meth:`autotune.tolerance.Verdict.to_dict`) and
the study's check set-up (:func:`autotune.agreement.record_agreement_setup`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autotune.page import Section

# Study user attribute: the agreement check in force (reference, bounds, check weights).
SETUP_ATTR = "agreement"
# Agreement figures in the order a reader wants them, with their names in words.
FIGURE_NAMES = {
    "dice": "Dice",
    "label_flip_share": "labels changed",
    "rel_l2_error": "rel. L2 error",
    "max_abs_error": "max abs error",
    "loss_rel_error": "loss rel. error",
    "grad_norm_rel_error": "grad-norm rel. error",
}
ROLE_NAMES = {"baseline": "baseline", "vendor_recommended": "vendor_recommended", "best": "best"}


def verdict_of(record: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The agreement verdict stored in a trial record, or None when it was not checked."""
    found = (record or {}).get("agreement")
    return found if isinstance(found, dict) else None


def cell(record: Mapping[str, Any] | None) -> str:
    """The end table's agreement cell: ``same (Dice 0.9991)``, ``INACCURATE: dice 0.95 < 0.99`` or ``-``."""
    verdict = verdict_of(record)
    if verdict is None:
        return "-"
    if verdict.get("note"):
        return f"not judged: {verdict['note']}"
    if verdict.get("failed"):
        return "INACCURATE: " + "; ".join(verdict["failed"])
    figures = verdict.get("figures") or {}
    keys = [name for name in FIGURE_NAMES if name in figures][:2] or list(figures)[:2]
    shown = ", ".join(f"{FIGURE_NAMES.get(k, k)} {_number(figures[k])}" for k in keys)
    return f"within bounds ({shown})" if shown else "within bounds"


def section(setup: Mapping[str, Any] | None, configs: Mapping[str, Mapping[str, Any] | None],
            inaccurate: Sequence[tuple[int, str]]) -> Section:
    """The report's "Output agreement" section: the reference, the bounds, the weights, and the figures."""
    if not setup:
        return Section(title="Output agreement", text=[
            "Not checked: this workload's search space declares no output-agreement check ([agreement]), so a "
            "faster configuration may compute a different answer."])
    text = []
    reference = setup.get("reference") or {}
    if reference:
        text.append("Every completed trial computed its outputs for fixed check inputs and weights, with the graph "
                    "it was timed with, and they were compared with the reference configuration ("
                    + " ".join(f"`{k}={v}`" for k, v in reference.items())
                    + ") at the same shape. Pruned trials were not checked; confirmation runs reuse the verdict.")
    else:
        text.append("Each completed trial's own quality figures were bounded (no reference run).")
    weights = setup.get("weights") or next(
        ((verdict_of(r) or {}).get("weights") for r in configs.values() if (verdict_of(r) or {}).get("weights")), {})
    if weights:
        trained = setup.get("weights_training_s")
        text.append(f"Check weights: {weights.get('label') or weights.get('kind')}"
                    + (f" (digest `{weights.get('digest')}`)" if weights.get("digest") else "")
                    + (f"; trained once in {float(trained):.0f} s, not counted in any trial." if trained else ".")
                    + (" Labels were not judged: with random weights the outputs sit near the threshold, where "
                       "any rounding flips a label; raw outputs were." if weights.get("kind") == "random" else ""))
    for rule in setup.get("rules") or []:
        when = rule.get("when") or {}
        scope = ("when " + ", ".join(f"{k} in {', '.join(v)}" for k, v in when.items())) if when else "always"
        text.append(f"Bounds {scope}: {', '.join(rule.get('bounds') or [])}.")
    if setup.get("overrides"):
        text.append("Set by the user for this study: " + ", ".join(f"`--tolerance {t}`" for t in setup["overrides"])
                    + " (the last rules above).")
    names = _figure_names(configs)
    rows = []
    for role, record in configs.items():
        verdict = verdict_of(record)
        if record is None:
            continue
        figures = (verdict or {}).get("figures") or {}
        rows.append([ROLE_NAMES.get(role, role), str(record.get("trial", "-")),
                     *(_number(figures.get(n)) for n in names), cell(record)])
    if inaccurate:
        text.append("Inaccurate configurations (measured, never a winner): "
                    + "; ".join(f"trial {n}: {why}" for n, why in inaccurate) + ".")
    headers = ["config", "trial", *(FIGURE_NAMES.get(n, n) for n in names), "verdict"] if rows else []
    return Section(title="Output agreement", text=text, headers=headers, rows=rows)


def run_line(stats: Mapping[str, Any]) -> str | None:
    """The run summary's line on what the checks cost, or None when nothing was checked."""
    if not stats.get("references") and not stats.get("check_s") and not stats.get("weights_training_s"):
        return None
    parts = [f"{stats.get('references', 0)} reference run(s) {stats.get('reference_s', 0.0):.0f}s",
             f"checks inside trials {stats.get('check_s', 0.0):.0f}s"]
    if stats.get("inaccurate"):
        parts.append(f"{stats['inaccurate']} inaccurate")
    line = "output agreement: " + ", ".join(parts)
    if stats.get("weights_training_s"):
        line += f"; check weights trained once in {stats['weights_training_s']:.0f}s (before the study)"
    return line


def _figure_names(configs: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    seen: dict[str, None] = {}
    for record in configs.values():
        seen.update(dict.fromkeys((verdict_of(record) or {}).get("figures") or {}))
    ordered = [n for n in FIGURE_NAMES if n in seen]
    return ordered + [n for n in seen if n not in FIGURE_NAMES]


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
