"""The summary, best.json and report.md of a stored fake study, and reading best.json back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest

from autotune.errors import UserError
from autotune.protocol import SCHEMA_VERSION
from autotune.record import FIGURES
from autotune.report import markdown, table_rows, write_outputs
from autotune.space import HostFacts, load_space
from autotune.study import RunOptions, run_study
from autotune.summary import (
    BEST_KIND,
    BEST_SCHEMA,
    WITHIN_PROCESS,
    WITHIN_PROCESS_CAVEAT,
    best_document,
    load_best,
    summarize_study,
)

# The TPE sampler's ``group`` option is experimental in Optuna; that is not under test.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

STUDY = "fake-report"

FIXED_KNOBS = (Path(__file__).resolve().parents[1] / "data" / "fake_fixed.toml").read_text()
# Search trials can crash (fault) or be 20x slower (slowdown, pruned).
REPORT_SPACE = FIXED_KNOBS + """

[knobs.fault]
type = "categorical"
choices = ["none", "crash"]
default = "none"
target = "param"

[knobs.slowdown]
type = "categorical"
choices = [1.0, 20.0]
default = 1.0
target = "param"

[knobs.steps]
type = "int"
low = 1
high = 100
default = 6
target = "param"
search = false

[knobs.step_seconds]
type = "float"
low = 0.0
high = 1.0
default = 0.003
target = "param"
search = false

[baseline]
data_format = "channels_first"
onednn = false

[vendor_recommended]
kmp_blocktime = "1"
"""


@pytest.fixture(scope="module")
def stored(tmp_path_factory, host):
    """A finished fake study: baseline, vendor, a crashed, a pruned and a fast search trial."""
    folder = tmp_path_factory.mktemp("report-study")
    (folder / "space.toml").write_text(REPORT_SPACE)
    space = load_space(folder / "space.toml", HostFacts.of(host))
    options = RunOptions(
        trials=2, storage=f"sqlite:///{folder / 'study.db'}", study_name=STUDY,
        report_dir=folder / "run-report", trial_timeout_s=10.0, memory_cap_mb=300.0, confirm_repeats=0,
    )
    assert run_study(options, host, space, {}) == 0
    study = optuna.load_study(study_name=STUDY, storage=options.storage)
    study.enqueue_trial({"fault": "crash", "slowdown": 1.0})
    study.enqueue_trial({"fault": "none", "slowdown": 20.0})
    study.enqueue_trial({"fault": "none", "slowdown": 1.0})
    assert run_study(dataclasses.replace(options, trials=3), host, space, {}) == 0
    return study, space, folder


@pytest.fixture(scope="module")
def summary(stored, host):
    study, space, _ = stored
    return summarize_study(study, space, host)


def test_summary_names_references_best_and_counts(stored, summary):
    study, _, _ = stored
    ok = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert summary.study == STUDY
    assert summary.workload == "fake"
    assert summary.configs["baseline"]["trial"] == 0
    assert summary.configs["baseline"]["role"] == "baseline"
    assert summary.configs["vendor_recommended"]["trial"] == 1
    assert summary.best["trial"] == max(ok, key=lambda t: t.value).number
    assert summary.best["trial"] in (1, 4)
    assert summary.counts == {"ok": 3, "crashed": 1, "pruned": 1}
    assert summary.searched == ["fault", "slowdown"]


def test_summary_lists_failed_and_pruned_trials_with_reasons(summary):
    (crashed, crash_outcome, crash_reason), (pruned, prune_outcome, prune_reason) = summary.failures

    assert (crashed, crash_outcome) == (2, "crashed")
    assert "RuntimeError: the fake workload crashed as told" in crash_reason
    assert (pruned, prune_outcome) == (3, "pruned")
    assert prune_reason == "pruned after 1 timed step"


def test_speedup_over_the_baseline(summary):
    speedup = summary.speedups["vs_baseline"]
    baseline, best = summary.configs["baseline"], summary.best

    assert speedup.value == pytest.approx(best["voxels_per_s"] / baseline["voxels_per_s"])
    assert speedup.value > 2  # channels_first and oneDNN off cost 8x in the fake
    assert speedup.low <= speedup.high
    assert summary.speedups["vs_vendor"].value >= 1


def test_without_confirmation_the_interval_is_labelled_within_one_process(summary):
    speedup = summary.speedups["vs_baseline"]
    steps = (len(summary.best["step_seconds"]), len(summary.configs["baseline"]["step_seconds"]))

    assert speedup.scope == WITHIN_PROCESS and speedup.at_least
    assert speedup.runs == {"trials": [summary.best["trial"], 0], "timed_steps": list(steps)}
    assert 0 < speedup.level < 1
    assert speedup.text().endswith(f"interval {WITHIN_PROCESS_CAVEAT})")
    assert "confidence" not in speedup.text()
    text = markdown(summary)
    assert f"interval {WITHIN_PROCESS_CAVEAT}" in text
    assert "No confirmation rounds ran" in text and "95%" not in text
    entry = best_document(summary)["speedup"]["vs_baseline"]
    assert entry["scope"] == WITHIN_PROCESS and entry["level_is_lower_bound"] is True
    assert entry["interval"] == [speedup.low, speedup.high] and entry["level"] == speedup.level


def test_markdown_shows_the_table_and_the_failures(summary):
    text = markdown(summary)

    assert text.startswith(f"# autotune report: {STUDY}\n")
    assert "| config | trial | knobs (vs baseline) |" in text
    assert "| baseline | 0 |" in text
    assert "| vendor_recommended | 1 |" in text
    assert "- Best speedup vs baseline: **" in text
    assert "- Trials: 1 crashed, 3 ok, 1 pruned." in text
    assert "- Knobs searched: fault, slowdown." in text
    assert "## Failed and pruned trials" in text
    crash = "exit status 1: RuntimeError: the fake workload crashed as told"
    assert f"| 2 | crashed | {crash} |" in text
    assert "| 3 | pruned | pruned after 1 timed step |" in text


def test_markdown_keeps_a_reason_inside_its_cell(summary):
    odd = dataclasses.replace(summary, failures=[(7, "crashed", "a | b\nsecond line")])

    row = next(line for line in markdown(odd).splitlines() if line.startswith("| 7 |"))

    assert row == "| 7 | crashed | a \\| b second line |"


def test_table_rows_give_speedups_relative_to_the_baseline(summary):
    rows = {row[0]: row for row in table_rows(summary)}

    assert rows["baseline"][-1] == "1.00x"
    assert float(rows["best"][-1].rstrip("x")) > 2
    assert "data_format=channels_first" not in rows["best"][2]


def test_best_document_is_versioned_and_complete(summary, host):
    document = best_document(summary)

    assert document["schema"] == BEST_SCHEMA == 2
    assert document["kind"] == BEST_KIND
    assert document["host_fingerprint"] == host.fingerprint
    assert document["host"]["fingerprint"] == host.fingerprint
    for role in ("baseline", "vendor_recommended", "best"):
        entry = document[role]
        assert {"trial", "role", "config", "env", "cpus", "step_seconds", "effective"} <= set(entry)
        assert set(FIGURES) <= set(entry)
    assert document["baseline"]["env"]["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert document["speedup"]["vs_baseline"]["value"] > 2
    assert len(document["speedup"]["vs_baseline"]["ci95"]) == 2
    assert document["trials"] == {"ok": 3, "crashed": 1, "pruned": 1}
    json.dumps(document)


def test_nothing_succeeded_still_reports(summary):
    empty = dataclasses.replace(
        summary,
        configs=dict.fromkeys(("baseline", "vendor_recommended", "best")),
        speedups={"vs_baseline": None, "vs_vendor": None},
    )

    document = best_document(empty)
    text = markdown(empty)

    assert document["best"] is None and document["speedup"]["vs_baseline"] is None
    assert "| baseline | - | (no successful trial) |" in text
    assert "Best speedup" not in text


def test_write_outputs_then_load_best_round_trips(summary, tmp_path):
    folder = tmp_path / "new" / "report"

    write_outputs(summary, folder)

    assert sorted(p.name for p in folder.iterdir()) == ["best.json", "report.md"]
    loaded = load_best(folder / "best.json")
    assert loaded["kind"] == BEST_KIND
    assert loaded["best"]["trial"] == summary.best["trial"]
    assert (folder / "report.md").read_text() == markdown(summary)


def test_a_schema_1_best_json_is_still_read(summary, tmp_path):
    from autotune.export import load_record

    document = best_document(summary)
    document["schema"] = 1
    document["speedup"] = {name: {"value": v["value"], "ci95": v["ci95"]}
                           for name, v in document["speedup"].items()}
    path = tmp_path / "best.json"
    path.write_text(json.dumps(document))

    assert load_best(path)["schema"] == 1
    assert load_record(path, "best").trial == summary.best["trial"]


def test_the_run_wrote_the_same_report(stored, summary):
    _, _, folder = stored

    assert (folder / "run-report" / "report.md").read_text() == markdown(summary)


def test_write_outputs_to_an_unwritable_folder_is_a_user_error(summary, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    with pytest.raises(UserError, match="cannot write the report to") as info:
        write_outputs(summary, blocker / "report")

    assert "\n" not in str(info.value)


def _write(path: Path, content: str | None) -> Path:
    if content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "not an autotune best.json"),
        (json.dumps({"kind": "other", "schema": SCHEMA_VERSION}), "not an autotune best.json"),
        (json.dumps({"schema": SCHEMA_VERSION}), "not an autotune best.json"),
        (json.dumps({"kind": BEST_KIND, "schema": 99}), "schema 99, this autotune reads 1 and 2"),
        (json.dumps({"kind": BEST_KIND}), "schema None"),
    ],
)
def test_load_best_errors_are_one_line(tmp_path, content, message):
    path = _write(tmp_path / "best.json", content)

    with pytest.raises(UserError, match=message) as info:
        load_best(path)

    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_load_best_of_a_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        load_best(tmp_path)
