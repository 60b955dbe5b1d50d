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
        importances: Knob -> importance (Optuna's default evaluator), most important first.
    """

    html: dict[str, str] = field(default_factory=dict)
    png: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    importances: dict[str, float] = field(default_factory=dict)


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """Knob importances by Optuna's default evaluator (fANOVA), or why there are none."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if len(done) < 3:
        return {}, "fewer than 3 completed trials"
    try:
        return dict(optuna.importance.get_param_importances(study)), None
    except (ValueError, RuntimeError) as exc:
        return {}, str(exc).splitlines()[0]


@dataclass(frozen=True)
class Bar:
    """One bar of the speedup chart: a speedup over the baseline and its interval, if it has one."""

    value: float
    low: float | None = None
    high: float | None = None


def draw(study: optuna.Study, folder: Path, speedups: Mapping[str, Bar], note: str = "") -> Figures:
    """Draw every figure of ``study``; PNGs go to ``folder``.

    Args:
        study: The study.
        folder: Report folder for the PNG files.
        speedups: Configuration label -> speedup over the baseline, for the bar chart.
        note: What the chart's error bars are, with the level they achieve
            (e.g. ``bars: 93.8% interval, 5 paired rounds``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vis_mpl

    figures = Figures()
    found, why = importances(study)
    figures.importances.update(found)
    enough = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) >= 2
    drawers: dict[str, tuple[Callable[..., Any], Callable[..., Any], str | None]] = {
        "Optimization history": (vis.plot_optimization_history, vis_mpl.plot_optimization_history, None),
        "Parallel coordinates": (vis.plot_parallel_coordinate, vis_mpl.plot_parallel_coordinate,
                                 None if enough else "fewer than 2 completed trials"),
        "Knob importances": (vis.plot_param_importances, vis_mpl.plot_param_importances, why),
        "Slices": (vis.plot_slice, vis_mpl.plot_slice, None if enough else "fewer than 2 completed trials"),
    }
    for title, (interactive, static, skip) in drawers.items():
        if skip:
            figures.skipped[title] = skip
            continue
        try:
            figures.html[title] = interactive(study).to_html(full_html=False, include_plotlyjs=False)
            with warnings.catch_warnings():  # a knob with one value gives matplotlib an empty axis range
                warnings.simplefilter("ignore", UserWarning)
                axes = static(study)
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
