from __future__ import annotations

import dataclasses
import re

import optuna
import pytest

from autotune.page import Section, to_html, to_markdown
from autotune.report import write_report
from autotune.study import RunOptions, run_study
from autotune.summary import summarize_study


def test_markdown_and_html_say_the_same_things():
    sections = [
        Section(title="", text=["Intro with **bold** and `code`."]),
        Section(title="Table", headers=["a", "b"], rows=[["1", "x | y"], ["<script>", "2.5"]]),
        Section(title="List", text=["one", "two"], bullets=True, figures=["Plot"]),
    ]
    md = to_markdown("T", sections, {"Plot": "plot.png"})
    assert md.startswith("# T\n")
    assert "| 1 | x \\| y |" in md and "- one" in md and "![Plot](plot.png)" in md
    page = to_html("T", sections, {"Plot": "<div id='p'></div>"}, "/*js*/")
    assert "<strong>bold</strong>" in page and "<code>code</code>" in page
    assert "&lt;script&gt;" in page and "<script>" not in page.replace("<script type=\"text/javascript\">", "")
    assert "<li>one</li>" in page and "<div id='p'></div>" in page
    assert '<td class="num">2.5</td>' in page


@pytest.fixture(scope="module")
def stored(tmp_path_factory, host, fake_space):
    folder = tmp_path_factory.mktemp("page")
    options = RunOptions(trials=6, timeout_s=120, storage=f"sqlite:///{folder / 's.db'}", study_name="page",
                         report_dir=folder / "r", trial_timeout_s=10, confirm_top=2, confirm_repeats=2)
    assert run_study(options, host, fake_space, {}) == 0
    study = optuna.load_study(study_name="page", storage=options.storage)
    study.enqueue_trial({"batch": 1}, user_attrs={"role": "search"})
    return study, folder


def test_full_report_is_self_contained(stored, host, fake_space):
    study, folder = stored
    summary = summarize_study(study, fake_space, host)
    write_report(summary, study, folder / "full")
    page = (folder / "full" / "report.html").read_text()
    assert not re.search(r"<script[^>]+src=", page), "the page must not load scripts from elsewhere"
    assert not re.search(r"<link[^>]+href=[\"']https?:", page)
    assert "Plotly" in page and page.count("plotly-graph-div") >= 4
    for heading in ("What the winner changed", "Knob importance", "Figures", "Speedup"):
        assert f"<h2>{heading}</h2>" in page
    md = (folder / "full" / "report.md").read_text()
    for png in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (folder / "full" / png).stat().st_size > 1000
    assert "of peak" in md and "GEMM peak" in md and "paired ratios over 2 interleaved confirmation rounds" in md
    assert (folder / "full" / "best.json").exists()


def test_report_of_a_study_without_successes_still_renders(stored, host, fake_space, tmp_path):
    study, _ = stored
    summary = summarize_study(study, fake_space, host)
    empty = dataclasses.replace(summary, configs={"baseline": None, "vendor_recommended": None, "best": None},
                                speedups={}, confirmation=None)
    write_report(empty, optuna.create_study(direction="maximize"), tmp_path / "empty")
    md = (tmp_path / "empty" / "report.md").read_text()
    assert "(no successful trial)" in md
    assert "not drawn" in md or "Not available" in md


def test_the_metric_is_named_with_its_unit_in_the_study_and_the_figures(stored, host, fake_space):
    study, folder = stored
    write_report(summarize_study(study, fake_space, host), study, folder / "named")
    page = (folder / "named" / "report.html").read_text()

    assert study.metric_names == ["voxels_per_s (voxels/s)"]
    # plotly writes the figures' JSON with "/" escaped
    assert page.count("voxels_per_s (voxels\\u002fs)") >= 3 and "Objective" not in page
    md = (folder / "named" / "report.md").read_text()
    assert "Optuna's PED-ANOVA evaluator" in md and "fANOVA" not in md
