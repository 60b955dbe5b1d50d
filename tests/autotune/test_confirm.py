from __future__ import annotations

import math
import os

import optuna
import pytest

from autotune.confirm import (
    BY_SAME_RUNS,
    BY_SEARCH,
    BY_SELECTION,
    CONFIRM_TIMED_SECONDS,
    SELECT,
    Candidate,
    Confirmation,
    Run,
    candidates_of,
    confirm,
    decide,
    describe,
    estimate_seconds,
    paired_speedup,
    run_seconds,
    select_winner,
    timed_steps,
)
from autotune.contract import Objective
from autotune.measurer import Measurer
from autotune.space import HostFacts, load_space
from autotune.verify import judge, verify

SPACE = """
[workload]
name = "fake"
module = "workloads.fake"
objective = { name = "voxels_per_s", unit = "voxels/s" }

[knobs.slowdown]
type = "categorical"
choices = [1.0, 1.5]
default = 1.0
target = "param"

[knobs.data_format]
type = "categorical"
choices = ["channels_first", "channels_last"]
default = "channels_last"
target = "param"
search = false

[knobs.steps]
type = "int"
low = 1
high = 100
default = 5
target = "param"
search = false

[knobs.warmup]
type = "int"
low = 0
high = 10
default = 1
target = "param"
search = false

[knobs.trial_seconds]
type = "float"
low = 0.0
high = 60.0
default = 0.0
target = "param"
search = false

[knobs.step_seconds]
type = "float"
low = 0.0
high = 1.0
default = 0.02
target = "param"
search = false

[baseline]
data_format = "channels_first"
slowdown = 1.0

[vendor_recommended]
data_format = "channels_last"
slowdown = 1.0
"""


@pytest.fixture
def space(tmp_path, host):
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    return load_space(path, HostFacts.of(host))


def add(study, config, value, role="search", **attrs):
    trial = optuna.trial.create_trial(
        params={},
        distributions={},
        value=value,
        user_attrs={"config": config, "role": role, "wall_seconds": 1.0, **attrs},
    )
    study.add_trial(trial)


OBJECTIVE = Objective("voxels_per_s", "voxels/s")


def make_spec(space, host):
    return Measurer(space, host, timeout_s=30)


def test_confirmation_overturns_a_lucky_search_trial(space, host):
    study = optuna.create_study(direction="maximize")
    slow = space.configure({"slowdown": 1.5})
    fast = space.configure({"slowdown": 1.0})
    add(study, space.reference("baseline"), 1000.0, role="baseline")
    add(study, slow, 900_000.0)  # noise in the search stage favoured the slower config
    add(study, fast, 200_000.0)
    candidates = candidates_of(study, space, top=2)
    assert [c.label for c in candidates] == ["trial 1", "trial 2", "baseline"]
    result = confirm(study, candidates, make_spec(space, host), repeats=2, select_rounds=1)
    assert result.winner == "trial 2" and result.chosen_by == BY_SELECTION
    assert result.selection["trial 2"] > result.selection["trial 1"]
    # One selection round of the finalists, then two estimation rounds of the winner and the baseline.
    assert [(r.label, r.stage) for r in result.runs] == [
        ("trial 1", "select"), ("trial 2", "select"),
        ("trial 2", "estimate"), ("baseline", "estimate"), ("trial 2", "estimate"), ("baseline", "estimate")]
    assert (result.selection_rounds, result.rounds) == (1, 2)
    speedup = result.speedups["vs_baseline"]
    assert speedup["value"] == pytest.approx(4.0, rel=0.15)  # fake: channels_first costs 4x
    assert speedup["low"] <= speedup["value"] <= speedup["high"]
    assert speedup["level"] == pytest.approx(0.5) and speedup["round_numbers"] == [1, 2]
    assert speedup["labels"] == ["trial 2", "baseline"]
    assert set(result.rates) == {"trial 2", "baseline"}  # the estimate's rates: no selection run in them
    assert study.user_attrs["confirmation"]["winner"] == "trial 2"
    assert "separate selection round" in describe(result, speedup)


def test_one_finalist_needs_no_selection_round(space, host):
    study = optuna.create_study(direction="maximize")
    add(study, space.reference("baseline"), 1000.0, role="baseline")
    add(study, space.configure({"slowdown": 1.0}), 200_000.0)
    result = confirm(study, candidates_of(study, space, top=1), make_spec(space, host), repeats=1, select_rounds=3)
    assert result.chosen_by == BY_SEARCH and result.selection_rounds == 0
    assert [r.label for r in result.runs] == ["trial 1", "baseline"]


def test_candidates_skip_duplicate_configs_and_repeats(space):
    study = optuna.create_study(direction="maximize")
    config = space.configure({"slowdown": 1.5})
    add(study, config, 10.0)
    add(study, config, 9.0)
    add(study, space.reference("vendor_recommended"), 8.0, role="vendor_recommended")
    add(study, space.configure({"slowdown": 1.0}), 7.0)  # the vendor's own config, found again by search
    labels = [c.label for c in candidates_of(study, space, top=3)]
    assert labels == ["trial 0", "vendor_recommended"]


def runs(values):
    return [Run(label, r, "ok", v) for r, row in enumerate(values) for label, v in row.items()]


def test_paired_speedup_is_the_median_of_round_ratios():
    rounds = runs([{"a": 10.0, "baseline": 2.0}, {"a": 9.0, "baseline": 3.0}, {"a": 8.0, "baseline": 2.0}])
    result = paired_speedup(rounds, "a", "baseline", OBJECTIVE)
    assert result["value"] == pytest.approx(4.0)
    assert result["rounds"] == 3 and result["round_numbers"] == [1, 2, 3]
    # Order statistics of 3 ratios: [min, max], which covers their median 75% of the time, not 95%.
    assert (result["low"], result["high"]) == (pytest.approx(3.0), pytest.approx(5.0))
    assert result["level"] == pytest.approx(0.75) and result["method"] == "order-statistic"
    assert paired_speedup(rounds, "baseline", "baseline", OBJECTIVE) is None
    assert paired_speedup(rounds, "missing", "baseline", OBJECTIVE) is None


def test_paired_speedup_leaves_out_the_selection_rounds():
    estimate = runs([{"a": 10.0, "baseline": 2.0}] * 5)
    selection = [Run("a", 0, "ok", 100.0, stage=SELECT), Run("baseline", 0, "ok", 1.0, stage=SELECT)]
    result = paired_speedup(selection + estimate, "a", "baseline", OBJECTIVE)
    assert result["value"] == pytest.approx(5.0) and result["high"] == pytest.approx(5.0)
    assert result["rounds"] == 5 and result["level"] == pytest.approx(0.9375)


def test_decide_ignores_failed_runs():
    candidates = [Candidate("a", 1, {}), Candidate("baseline", 0, {})]
    result = decide(candidates, [Run("a", 0, "crashed"), Run("baseline", 0, "ok", 5.0)], "a", BY_SEARCH, OBJECTIVE)
    assert result.rates == {"baseline": 5.0} and result.speedups["vs_baseline"] is None
    assert Confirmation.from_dict(result.to_dict(), OBJECTIVE) == result


def test_an_older_confirmation_is_read_with_its_honest_level():
    # The shape autotune stored before schema 2: no stages, the same rounds chose and estimated,
    # and a 95% bootstrap interval that was [min, max] of three ratios.
    old = {
        "candidates": [{"label": "trial 12", "trial": 12, "config": {}},
                       {"label": "trial 16", "trial": 16, "config": {}},
                       {"label": "baseline", "trial": 0, "config": {}}],
        "runs": [{"label": label, "round": r, "outcome": "ok", "voxels_per_s": v, "median_step_s": 1.0,
                  "cv": 0.01, "step_seconds": [1.0]}
                 for r, row in enumerate([{"trial 16": 19.0, "trial 12": 17.0, "baseline": 1.25},
                                          {"trial 16": 21.0, "trial 12": 20.0, "baseline": 1.29},
                                          {"trial 16": 19.1, "trial 12": 19.4, "baseline": 1.29}])
                 for label, v in row.items()],
        "winner": "trial 12", "rates": {}, "speedups": {"vs_baseline": {"value": 15.0, "low": 13.4, "high": 15.7,
                                                                         "rounds": 3}, "vs_vendor": None},
    }
    confirmation = Confirmation.from_dict(old, OBJECTIVE)  # its runs keep the value under the objective's name
    speedup = confirmation.speedups["vs_baseline"]
    assert confirmation.chosen_by == BY_SAME_RUNS and confirmation.winner == "trial 12"
    assert speedup["level"] == pytest.approx(0.75) and speedup["rounds"] == 3
    assert speedup["low"] == pytest.approx(17.0 / 1.25) and speedup["high"] == pytest.approx(20.0 / 1.29)
    assert "biases this speedup upward" in describe(confirmation, speedup)


def test_judge_flags_a_slower_winner_only():
    candidates = [Candidate("a", 1, {}), Candidate("baseline", 0, {})]

    def measured(rate):
        return decide(candidates, runs([{"a": rate, "baseline": 2.0}] * 5), "a", BY_SEARCH, OBJECTIVE)

    stored = measured(10.0)
    assert judge(stored, measured(10.5), OBJECTIVE).holds
    assert judge(stored, measured(12.0), OBJECTIVE).holds
    slower = judge(stored, measured(5.0), OBJECTIVE)
    assert not slower.holds
    assert any("50% of its stored voxels_per_s" in r for r in slower.reasons)
    assert any("93.8% interval, 5 rounds" in r for r in slower.reasons)
    assert slower.level == pytest.approx(0.9375) and slower.rounds == 5


@pytest.mark.parametrize(("median", "ran", "steps"), [
    (16.0, 3, 1),  # the 128^3 baseline: one 16 s step instead of three
    (2.03, 3, 2),  # the vendor config
    (0.29, 20, math.ceil(CONFIRM_TIMED_SECONDS / 0.29)),
    (0.29, 4, 4),  # never more steps than its search trial ran
    (16.0, 2, None),  # fewer than three timed steps: nothing to shorten, run as it ran
])
def test_confirmation_runs_time_about_three_seconds_of_steps(median, ran, steps):
    record = {"median_step_s": median, "step_seconds": [median] * ran, "wall_seconds": 70.0}
    assert timed_steps(record) == steps
    if steps is not None:
        assert run_seconds(record, steps) == pytest.approx(70.0 - (ran - steps) * median)


def test_a_shorter_run_is_the_drivers_order_whatever_the_workload_knobs(space, host):
    config = space.configure({"steps": 9, "trial_seconds": 6.0, "step_seconds": 0.001})

    _, outcome = Measurer(space, host, timeout_s=30).run(config, timed_steps=2)

    assert outcome.outcome.value == "ok" and len(outcome.step_seconds) == 2 and outcome.planned_steps == 2


def test_estimate_counts_one_selection_round_and_the_estimation_rounds(space):
    study = optuna.create_study(direction="maximize")
    add(study, space.reference("baseline"), 1000.0, role="baseline", wall_seconds=70.0)
    add(study, space.reference("vendor_recommended"), 5000.0, role="vendor_recommended", wall_seconds=20.0)
    add(study, space.configure({"slowdown": 1.5, "steps": 6}), 9000.0, wall_seconds=15.0)
    add(study, space.configure({"slowdown": 1.5, "steps": 7}), 8000.0, wall_seconds=16.0)
    # Selection: both finalists once; estimation: the slower finalist, the vendor config and the baseline.
    assert estimate_seconds(study, space, 2, 5, 1) == pytest.approx((15 + 16) + 5 * (16 + 20 + 70))
    assert estimate_seconds(study, space, 2, 5, 0) == pytest.approx(5 * (16 + 20 + 70))
    assert estimate_seconds(study, space, 1, 3, 1) == pytest.approx(3 * (15 + 20 + 70))


def test_estimate_counts_the_shorter_confirmation_runs(space):
    study = optuna.create_study(direction="maximize")
    calibrated = {"trial_seconds": 6.0, "steps": 20}
    add(study, space.configure({**space.reference("baseline"), **calibrated}), 1000.0, role="baseline",
        wall_seconds=70.0, median_step_s=16.0, step_seconds=[16.0] * 3)
    add(study, space.configure({"slowdown": 1.5, **calibrated}), 9000.0, wall_seconds=15.0, median_step_s=0.3,
        step_seconds=[0.3] * 4)
    candidates = candidates_of(study, space, 1)
    assert [c.timed_steps for c in candidates] == [4, 1]
    # The baseline times one 16 s step instead of three: 70 - 2 x 16 = 38 s a round.
    assert estimate_seconds(study, space, 1, 5, 1) == pytest.approx(5 * (15 + 38))


def test_verify_detects_an_injected_regression(space, host, monkeypatch):
    study = optuna.create_study(direction="maximize")
    add(study, space.reference("baseline"), 1000.0, role="baseline")
    add(study, space.configure({"slowdown": 1.0}), 200_000.0)
    confirm(study, candidates_of(study, space, top=1), make_spec(space, host), repeats=2)
    assert verify(study, make_spec(space, host), repeats=2).holds
    monkeypatch.setenv("AUTOTUNE_FAKE_SLOWDOWN", "2")
    assert os.environ["AUTOTUNE_FAKE_SLOWDOWN"] == "2"
    verdict = verify(study, make_spec(space, host), repeats=2)
    assert not verdict.holds
    assert verdict.rate == pytest.approx(verdict.stored_rate / 2, rel=0.15)
    assert "confirmation" in study.user_attrs and "verification" in study.user_attrs


def test_run_study_confirms_and_reports_paired_speedup(tmp_path, host, fake_space, capsys):
    import json

    from autotune.study import RunOptions, run_study

    options = RunOptions(trials=4, timeout_s=120, storage=f"sqlite:///{tmp_path / 's.db'}", study_name="c",
                         report_dir=tmp_path / "r", trial_timeout_s=10, confirm_top=1, confirm_repeats=2)
    assert run_study(options, host, fake_space, {}) == 0
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    confirmation = best["confirmation"]
    assert confirmation["rounds"] == 2 and confirmation["selection_rounds"] == 0
    labels = [run["label"] for run in confirmation["runs"]]
    # The winner may be the vendor configuration itself (the fake's best trial ties it), so two or three
    # configurations run, each once per round.
    assert {"baseline", "vendor_recommended"} <= set(labels) and len(set(labels)) in (2, 3)
    assert all(labels.count(label) == 2 for label in set(labels))
    speedup = best["speedup"]["vs_baseline"]
    assert best["schema"] == 2
    assert speedup["value"] == pytest.approx(8.0, rel=0.2)
    assert speedup["level"] == pytest.approx(0.5) and speedup["scope"] == "paired rounds"
    assert speedup["runs"]["rounds"] == [1, 2] and speedup["runs"]["labels"][1] == "baseline"
    assert speedup["interval"] == speedup["ci95"]
    assert best["figures"]["best"]["voxels_per_s"] == pytest.approx(confirmation["rates"][confirmation["winner"]])
    report = (tmp_path / "r" / "report.md").read_text()
    assert "paired ratios over 2 interleaved confirmation rounds" in report
    assert "50% interval" in report and "95%" not in report
    printed = " ".join(capsys.readouterr().out.split())
    assert "best speedup vs baseline:" in printed and "50% interval); median of paired ratios" in printed
    assert "What is estimated: the median over rounds of the paired ratio of voxels_per_s" in printed


def test_a_latency_objective_is_confirmed_the_other_way_round():
    latency = Objective("latency_s", "s", "minimize")
    rounds = runs([{"a": 0.5, "baseline": 2.0}, {"a": 0.4, "baseline": 2.0}, {"a": 1.0, "baseline": 2.0}])
    candidates = [Candidate("a", 1, {}), Candidate("b", 2, {}), Candidate("baseline", 0, {})]
    selection = [Run("a", 0, "ok", 0.5, stage=SELECT), Run("b", 0, "ok", 0.9, stage=SELECT)]

    result = paired_speedup(rounds, "a", "baseline", latency)

    assert result["value"] == pytest.approx(4.0)  # 2.0 / 0.5: four times lower latency
    assert (result["low"], result["high"]) == (pytest.approx(2.0), pytest.approx(5.0))
    assert select_winner(candidates[:2], selection, latency) == "a"
    assert judge(decide(candidates, rounds, "a", BY_SEARCH, latency),
                 decide(candidates, runs([{"a": 1.0, "baseline": 2.0}] * 3), "a", BY_SEARCH, latency), latency
                 ).holds is False


def test_the_vendor_configuration_can_be_the_winner(space, host):
    study = optuna.create_study(direction="maximize")
    add(study, space.reference("baseline"), 1000.0, role="baseline")
    add(study, space.reference("vendor_recommended"), 300_000.0, role="vendor_recommended")
    add(study, space.configure({"slowdown": 1.5}), 200_000.0)  # the search found nothing better

    candidates = candidates_of(study, space, top=2)

    assert [(c.label, c.finalist) for c in candidates] == [
        ("vendor_recommended", True), ("trial 2", True), ("baseline", False)]
    result = confirm(study, candidates, make_spec(space, host), repeats=1, select_rounds=1)
    assert result.winner == "vendor_recommended"
    assert [r.label for r in result.runs if r.stage == "estimate"] == ["vendor_recommended", "baseline"]
    assert result.speedups["vs_vendor"] is None and result.speedups["vs_baseline"]["value"] > 1
