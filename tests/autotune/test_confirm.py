from __future__ import annotations

import os

import optuna
import pytest

from autotune.confirm import Candidate, Confirmation, Run, candidates_of, confirm, decide, paired_speedup
from autotune.launch import trial_spec
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


def add(study, config, value, role="search"):
    trial = optuna.trial.create_trial(
        params={},
        distributions={},
        value=value,
        user_attrs={"config": config, "role": role, "wall_seconds": 1.0},
    )
    study.add_trial(trial)


def make_spec(space, host):
    return lambda config: trial_spec(space, config, host, timeout_s=30)


def test_confirmation_overturns_a_lucky_search_trial(space, host):
    study = optuna.create_study(direction="maximize")
    slow = space.configure({"slowdown": 1.5})
    fast = space.configure({"slowdown": 1.0})
    add(study, space.reference("baseline"), 1000.0, role="baseline")
    add(study, slow, 900_000.0)  # noise in the search stage favoured the slower config
    add(study, fast, 200_000.0)
    candidates = candidates_of(study, space, top=2)
    assert [c.label for c in candidates] == ["trial 1", "trial 2", "baseline"]
    result = confirm(study, candidates, make_spec(space, host), repeats=2)
    assert result.winner == "trial 2"
    assert result.rates["trial 2"] > result.rates["trial 1"]
    assert len(result.runs) == 6 and [r.label for r in result.runs[:3]] == ["trial 1", "trial 2", "baseline"]
    speedup = result.speedups["vs_baseline"]
    assert speedup["value"] == pytest.approx(4.0, rel=0.15)  # fake: channels_first costs 4x
    assert speedup["low"] <= speedup["value"] <= speedup["high"]
    assert study.user_attrs["confirmation"]["winner"] == "trial 2"


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
    result = paired_speedup(rounds, "a", "baseline")
    assert result["value"] == pytest.approx(4.0)
    assert result["rounds"] == 3
    assert 3.0 <= result["low"] <= 4.0 <= result["high"] <= 5.0
    assert paired_speedup(rounds, "baseline", "baseline") is None
    assert paired_speedup(rounds, "missing", "baseline") is None


def test_decide_ignores_failed_runs():
    candidates = [Candidate("a", 1, {}), Candidate("baseline", 0, {})]
    result = decide(candidates, [Run("a", 0, "crashed"), Run("baseline", 0, "ok", 5.0)])
    assert result.winner == "baseline"
    assert Confirmation.from_dict(result.to_dict()) == result


def test_judge_flags_a_slower_winner_only():
    candidates = [Candidate("a", 1, {}), Candidate("baseline", 0, {})]
    stored = decide(candidates, runs([{"a": 10.0, "baseline": 2.0}] * 3))
    assert judge(stored, decide(candidates, runs([{"a": 10.5, "baseline": 2.0}] * 3))).holds
    assert judge(stored, decide(candidates, runs([{"a": 12.0, "baseline": 2.0}] * 3))).holds
    slower = judge(stored, decide(candidates, runs([{"a": 5.0, "baseline": 2.0}] * 3)))
    assert not slower.holds
    assert any("50% of its stored throughput" in r for r in slower.reasons)


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


def test_run_study_confirms_and_reports_paired_speedup(tmp_path, host, fake_space):
    import json

    from autotune.study import RunOptions, run_study

    options = RunOptions(trials=4, timeout_s=120, storage=f"sqlite:///{tmp_path / 's.db'}", study_name="c",
                         report_dir=tmp_path / "r", trial_timeout_s=10, confirm_top=1, confirm_repeats=2)
    assert run_study(options, host, fake_space, {}) == 0
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    confirmation = best["confirmation"]
    assert confirmation["rounds"] == 2
    assert len(confirmation["runs"]) == 2 * 3
    assert best["speedup"]["vs_baseline"]["value"] == pytest.approx(8.0, rel=0.2)
    assert best["figures"]["best"]["voxels_per_s"] == pytest.approx(confirmation["rates"][confirmation["winner"]])
    assert "paired ratios over 2 interleaved confirmation rounds" in (tmp_path / "r" / "report.md").read_text()
