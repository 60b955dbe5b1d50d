"""The output-agreement guard in a study: inaccurate configurations are stored, never win, never deploy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest

from autotune.agreement import ATTR_PREFIX, CONSTRAINT, AgreementGuard
from autotune.errors import UserError
from autotune.export import load_record
from autotune.measurer import Measurer
from autotune.space import HostFacts, load_space
from autotune.study import RunOptions, run_study
from tests.conftest import FAKE_SPACE

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

STUDY = "agree-test"
# Only the answer varies; a wrong answer is the fastest configuration there is.
PINS = {"step_seconds": 0.02, "data_format": "channels_last", "intra_threads": 0, "onednn": True, "batch": 1}


def searched_answer(host, tmp_path: Path):
    text = FAKE_SPACE.read_text().replace(
        'default = "exact"\ntarget = "param"\nsearch = false', 'default = "exact"\ntarget = "param"')
    path = tmp_path / "space.toml"
    path.write_text(text)
    return load_space(path, HostFacts.of(host))


def options(tmp_path: Path, **changes) -> RunOptions:
    values = {"trials": 5, "timeout_s": 120.0, "storage": f"sqlite:///{tmp_path / 'study.db'}",
              "study_name": STUDY, "sampler": "grid", "report_dir": tmp_path / "report", "trial_timeout_s": 20.0,
              "confirm_repeats": 0, "memory_cap_mb": 300.0, **changes}
    return RunOptions(**values)


def trials_of(tmp_path: Path, name: str = STUDY) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    found = {}
    for trial in study.get_trials():
        if "repeat_of" not in trial.user_attrs and trial.user_attrs.get("config"):
            found.setdefault(trial.user_attrs["config"]["answer"], trial)
    return found


def test_wrong_outputs_are_inaccurate_and_never_win_though_fastest(tmp_path, host) -> None:
    space = searched_answer(host, tmp_path)
    status = run_study(options(tmp_path), host, space, PINS)

    assert status == 0
    by_answer = trials_of(tmp_path)
    wrong, rounded, exact = by_answer["wrong"], by_answer["rounded"], by_answer["exact"]
    assert wrong.value > rounded.value > exact.value  # measured as the fastest ...
    assert wrong.state == optuna.trial.TrialState.COMPLETE
    assert wrong.user_attrs["outcome"] == "inaccurate"
    assert "dice 0 < 0.9999" in wrong.user_attrs["reason"]
    assert wrong.constraints[CONSTRAINT] > 0
    assert wrong.user_attrs["agreement"]["figures"]["dice"] == 0.0
    assert rounded.user_attrs["outcome"] == "ok"  # inside its own, looser, bound
    assert rounded.constraints[CONSTRAINT] == 0
    assert 0 < rounded.user_attrs["agreement"]["figures"]["rel_l2_error"] < 0.01
    assert exact.user_attrs["agreement"]["figures"]["rel_l2_error"] == 0.0
    # ... and never the winner: Optuna's best, best.json and the report all skip it.
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.best_trial.number == rounded.number
    best = json.loads((tmp_path / "report" / "best.json").read_text())
    assert best["best"]["trial"] == rounded.number
    assert best["best"]["agreement"]["ok"] is True
    assert best["baseline"]["agreement"]["figures"]["dice"] == 1.0
    assert best["agreement"]["inaccurate"] == [{"trial": wrong.number, "reason": wrong.user_attrs["reason"]}]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Output agreement" in report
    assert f"trial {wrong.number}: outputs disagree" in report
    assert "Check weights: the fake workload's fixed weights" in report
    assert "Search trial time" in report and "s completed" in report


def test_reference_is_stored_once_per_shape_and_reused_by_later_runs(tmp_path, host) -> None:
    space = searched_answer(host, tmp_path)
    run_study(options(tmp_path, trials=3), host, space, PINS)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'study.db'}")
    attrs = study._storage.get_study_system_attrs(study._study_id)
    heads = [k for k in attrs if k.startswith(ATTR_PREFIX) and k.count(":") == 2]
    assert len(heads) == 1  # one shape (batch 1, patch 16, infer): one reference

    measurer = Measurer(space, host, timeout_s=20.0, memory_cap_mb=300.0)
    guard = AgreementGuard(study, measurer, PINS, space.agreement)
    config = space.configure({**PINS, "answer": "rounded"})
    _, outcome = measurer.run(config, outputs=True)
    verdict = guard.judge(config, outcome.result.outputs, outcome.result.figures)
    assert verdict.ok
    assert guard.stats.references == 0  # read from the storage, not measured again

    batch2 = space.configure({**PINS, "batch": 2, "answer": "exact"})
    _, outcome = measurer.run(batch2, outputs=True)
    assert guard.judge(batch2, outcome.result.outputs, outcome.result.figures).ok
    assert guard.stats.references == 1  # a new shape needs its own reference


def test_a_failing_reference_leaves_trials_not_judged_and_never_winning(tmp_path, host) -> None:
    space = searched_answer(host, tmp_path)
    crashing = {**space.agreement.reference, "fault": "crash", "fault_after": 0}
    spec = dataclasses.replace(space.agreement, reference=crashing)
    space = dataclasses.replace(space, agreement=spec)
    status = run_study(options(tmp_path, trials=3), host, space, PINS)

    assert status == 1  # nothing may win
    for trial in trials_of(tmp_path).values():
        assert trial.user_attrs["outcome"] == "inaccurate"
        assert trial.user_attrs["reason"].startswith("outputs not judged: the reference configuration failed (crashed")


def test_a_tolerance_nobody_meets_reports_the_baseline_and_says_so(tmp_path, host, capsys) -> None:
    space = searched_answer(host, tmp_path)
    spec = space.agreement.with_overrides(["rel_l2_error=-1"], space.knobs)
    space = dataclasses.replace(space, agreement=spec)
    status = run_study(options(tmp_path, trials=4, confirm_repeats=2), host, space, PINS)

    out = capsys.readouterr().out
    assert status == 1
    assert "No configuration met the output-agreement tolerance" in " ".join(out.split())
    assert "confirmation: skipped" in out
    best = json.loads((tmp_path / "report" / "best.json").read_text())
    assert best["best"] is None
    assert best["baseline"]["trial"] == 0 and best["baseline"]["voxels_per_s"] > 0
    assert best["baseline"]["agreement"]["ok"] is False
    assert best["agreement"]["overrides"] == ["rel_l2_error=-1"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "`--tolerance rel_l2_error=-1`" in report
    with pytest.raises(UserError, match="inaccurate configuration"):
        load_record(tmp_path / "report" / "best.json", "baseline")


def test_a_repeat_of_an_inaccurate_configuration_stays_infeasible(tmp_path, host) -> None:
    space = searched_answer(host, tmp_path)
    pins = {**PINS, "answer": "wrong"}
    run_study(options(tmp_path, trials=4, sampler="random"), host, space, pins)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'study.db'}")
    repeats = [t for t in study.get_trials() if "repeat_of" in t.user_attrs]
    assert repeats, "a fully pinned space repeats its one configuration"
    assert all(t.constraints.get(CONSTRAINT, 0) > 0 for t in repeats)
    with pytest.raises(ValueError):
        study.best_trial


def test_the_user_tolerance_is_part_of_the_study(tmp_path, host) -> None:
    space = searched_answer(host, tmp_path)
    run_study(options(tmp_path, trials=2), host, space, PINS)
    looser = dataclasses.replace(space, agreement=space.agreement.with_overrides(["dice=0.5"], space.knobs))
    with pytest.raises(UserError, match="a tolerance is part of the study"):
        run_study(options(tmp_path, trials=1), host, looser, PINS)
