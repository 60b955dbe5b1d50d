"""Figures of a study, drawn by Optuna's own visualization: interactive (plotly) and PNG (matplotlib).

Each figure is made twice from the same study: a plotly figure for the HTML report and a PNG file
for the Markdown report. A figure Optuna cannot draw (too few trials, no varied parameter) is left
out and the reason kept, so a report of a small study still renders.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from autotune.errors import UserError

# Optuna's visualization modules mark themselves experimental; the figures are what we want.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass(frozen=True)
class Figures:
    """The drawn figures of one study.

    Attributes:
        html: Title -> plotly figure as an HTML fragment (plotly.js not included).
        png: Title -> PNG file name, relative to the report folder.
        skipped: Title -> why the figure was left out.
        importances: Knob -> importance (:data:`IMPORTANCE_METHOD`), most important first.
        importance_caveats: What the importance evaluator warned about.
    """

    html: dict[str, str] = field(default_factory=dict)
    png: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    importances: dict[str, float] = field(default_factory=dict)
    importance_caveats: list[str] = field(default_factory=list)


# PED-ANOVA (Watanabe et al., "PED-ANOVA: Efficiently Quantifying Hyperparameter Importance in
# Arbitrary Subspaces", IJCAI 2023): how differently each knob's values are spread among the top
# trials than among all completed ones. Chosen over fANOVA because it needs no random forest (fANOVA
# needs scikit-learn) and is meant for few trials. Optuna's documentation asks for at least 5 trials
# above the target quantile, so the quantile grows from its default 10% in a small study (up to half).
IMPORTANCE_METHOD = "Optuna's PED-ANOVA evaluator (Watanabe et al. 2023)"
PED_ANOVA_QUANTILE = 0.1
PED_ANOVA_MIN_TOP_TRIALS = 5
MIN_TRIALS_FOR_IMPORTANCE = 3


def importance_evaluator(completed: int) -> optuna.importance.PedAnovaImportanceEvaluator:
    """The evaluator of knob importance for a study with ``completed`` complete trials."""
    quantile = min(0.5, max(PED_ANOVA_QUANTILE, PED_ANOVA_MIN_TOP_TRIALS / max(completed, 1)))
    return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None, list[str]]:
    """Knob importances by :data:`IMPORTANCE_METHOD`.

    Returns:
        ``(importance by knob, why there are none or None, caveats)``: a caveat is the evaluator's
        own warning (a knob value seen in fewer than two trials), said in the report rather than on
        stderr.
    """
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, f"fewer than {MIN_TRIALS_FOR_IMPORTANCE} completed trials", []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            found = dict(optuna.importance.get_param_importances(study, evaluator=importance_evaluator(len(done))))
        except (ValueError, RuntimeError) as exc:
            return {}, str(exc).splitlines()[0], []
    caveats = sorted({" ".join(str(w.message).split()) for w in seen
                      if not issubclass(w.category, optuna.exceptions.ExperimentalWarning)})
    return found, None, caveats


@dataclass(frozen=True)
class Bar:
    """One bar of the speedup chart: a speedup over the baseline and its interval, if it has one."""

    value: float
    low: float | None = None
    high: float | None = None


def draw(
    study: optuna.Study, folder: Path, speedups: Mapping[str, Bar], note: str = "", target_name: str = "Objective"
) -> Figures:
    """Draw every figure of ``study``; PNGs go to ``folder``.

    Args:
        study: The study.
        folder: Report folder for the PNG files.
        speedups: Configuration label -> speedup over the baseline, for the bar chart.
        target_name: The objective with its unit, for the axes (e.g. ``samples_per_s (samples/s)``).
        note: What the chart's error bars are, with the level they achieve
            (e.g. ``bars: 93.8% interval, 5 paired rounds``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vis_mpl

    figures = Figures()
    found, why, caveats = importances(study)
    figures.importances.update(found)
    figures.importance_caveats.extend(caveats)
    completed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    enough = completed >= 2
    named = {"target_name": target_name}
    drawers: dict[str, tuple[Callable[..., Any], Callable[..., Any], str | None, dict[str, Any]]] = {
        "Optimization history": (vis.plot_optimization_history, vis_mpl.plot_optimization_history,
                                 None if completed else "no completed trials", named),
        "Parallel coordinates": (vis.plot_parallel_coordinate, vis_mpl.plot_parallel_coordinate,
                                 None if enough else "fewer than 2 completed trials", named),
        "Knob importances": (vis.plot_param_importances, vis_mpl.plot_param_importances, why,
                             {**named, "evaluator": importance_evaluator(completed)}),
        "Slices": (vis.plot_slice, vis_mpl.plot_slice, None if enough else "fewer than 2 completed trials", named),
    }
    for title, (interactive, static, skip, options) in drawers.items():
        if skip:
            figures.skipped[title] = skip
            continue
        try:
            with warnings.catch_warnings():  # the evaluator's caveats are kept above; matplotlib's
                warnings.simplefilter("ignore", UserWarning)  # empty axis range of a one-value knob
                figures.html[title] = interactive(study, **options).to_html(full_html=False, include_plotlyjs=False)
                axes = static(study, **options)
            figure = _figure_of(axes)
            figure.set_size_inches(10, 5.5)
            name = _file_name(title)
            figure.savefig(folder / name, dpi=80, bbox_inches="tight")
            plt.close(figure)
            figures.png[title] = name
        except (ValueError, RuntimeError, TypeError, IndexError) as exc:
            figures.skipped[title] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except OSError as exc:
            raise UserError(f"cannot write {folder}: {exc.strerror or exc}") from None
    if speedups:
        _speedup_chart(figures, folder, speedups, plt, note)
    return figures


def _speedup_chart(figures: Figures, folder: Path, speedups: Mapping[str, Bar], plt: Any, note: str = "") -> None:
    import plotly.graph_objects as go

    title = "Speedup over the baseline"
    labels, bars = list(speedups), list(speedups.values())
    values = [b.value for b in bars]
    # Error bars as distances from the value; a bar without an interval (the baseline) gets none.
    below = [0.0 if b.low is None else max(0.0, b.value - b.low) for b in bars]
    above = [0.0 if b.high is None else max(0.0, b.high - b.value) for b in bars]
    errors = any(below) or any(above)
    axis = "throughput / baseline throughput"
    bar = go.Figure(go.Bar(
        x=labels, y=values, text=[f"{v:.2f}x" for v in values], textposition="auto",
        error_y=dict(type="data", symmetric=False, array=above, arrayminus=below, visible=errors),
    ))
    bar.update_layout(title=f"{title}<br><sup>{note}</sup>" if note else title, yaxis_title=axis)
    figures.html[title] = bar.to_html(full_html=False, include_plotlyjs=False)
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.bar(labels, values, color=["#999999", "#4c72b0", "#dd8452"][: len(values)],
             yerr=[below, above] if errors else None, capsize=6 if errors else 0)
    for x, (value, extra) in enumerate(zip(values, above, strict=True)):
        axes.annotate(f"{value:.2f}x", (x, value + extra), ha="center", va="bottom", xytext=(0, 3),
                      textcoords="offset points")
    axes.set_ylabel(axis)
    axes.set_title(f"{title}\n({note})" if note else title)
    name = _file_name(title)
    try:
        figure.savefig(folder / name, dpi=80, bbox_inches="tight")
    except OSError as exc:
        raise UserError(f"cannot write {folder}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
    figures.png[title] = name


def _figure_of(axes: Any) -> Any:
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    return first.get_figure()


def _file_name(title: str) -> str:
    return title.lower().replace(" ", "-") + ".png"


def plotly_js() -> str:
    """plotly.js itself, to inline once into a self-contained HTML page."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()
