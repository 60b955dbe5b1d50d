"""The speedup chart: error bars from the interval ends, and the level they achieve said on the chart."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from matplotlib.container import ErrorbarContainer

from autotune.plots import Bar, Figures, _speedup_chart

NOTE = "bars: 93.8% interval, 5 paired rounds"
TITLE = "Speedup over the baseline"


class KeepFigure:
    """matplotlib.pyplot, except that the chart's figure is kept for the test to read."""

    def __init__(self) -> None:
        self.figures = []

    def subplots(self, *args, **kwargs):
        return plt.subplots(*args, **kwargs)

    def close(self, figure) -> None:
        self.figures.append(figure)


@pytest.fixture
def drawn(tmp_path):
    keep = KeepFigure()
    figures = Figures()
    bars = {"baseline": Bar(1.0), "vendor_recommended": Bar(8.0, 7.5, 8.4), "best": Bar(15.0, 13.4, 15.7)}
    _speedup_chart(figures, tmp_path, bars, keep, NOTE)
    yield figures, keep.figures[0], tmp_path
    plt.close(keep.figures[0])


def test_png_has_error_bars_at_the_interval_ends(drawn):
    figures, figure, folder = drawn
    axes = figure.axes[0]
    errorbar = next(c for c in axes.containers if isinstance(c, ErrorbarContainer))
    (segments,) = errorbar.lines[2]
    ends = sorted((round(s[0][1], 6), round(s[1][1], 6)) for s in segments.get_segments())
    assert ends == [(1.0, 1.0), (7.5, 8.4), (13.4, 15.7)]
    assert NOTE in axes.get_title()
    assert (folder / figures.png[TITLE]).stat().st_size > 0


def test_html_has_asymmetric_error_bars_and_the_level(drawn):
    figures, _, _ = drawn
    html = figures.html[TITLE]
    assert '"error_y":{"array":[0.0,0.40000000000000036,0.6999999999999993]' in html.replace(" ", "")
    assert '"arrayminus":[0.0,0.5,1.5999999999999996]' in html.replace(" ", "")
    assert NOTE in html


def test_bars_without_intervals_draw_no_error_bars(tmp_path):
    keep = KeepFigure()
    figures = Figures()
    _speedup_chart(figures, tmp_path, {"baseline": Bar(1.0), "best": Bar(3.0)}, keep)
    assert not [c for c in keep.figures[0].axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert keep.figures[0].axes[0].get_title() == TITLE
    plt.close(keep.figures[0])
