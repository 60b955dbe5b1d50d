"""Warm starts: an earlier study's best measured first, its known-bad configurations handed to the sampler."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from autotune.errors import UserError
from autotune.feasible import PRIOR_ROLE
from autotune.study import RunOptions, run_study
from autotune.study.setup import search_sampler
from autotune.study.warm import SOURCES_ATTR, WARM_ATTR, applied, earlier_studies, warm_start

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

PINS = {"step_seconds": 0.003}


def source_study(storage: str, space, host_dict: dict[str, Any], name: str = "src", workload: str = "fake"
                 ) -> optuna.Study:
    """A stored study with references, three measured search configurations and three bad ones."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("workload", workload)
    study.set_user_attr("host", host_dict)

    def add(values: dict[str, Any], state: optuna.trial.TrialState, value: float | None = None, **attrs: Any) -> None:
        config = space.configure({**PINS, **values})
        attrs.setdefault("role", "search")
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, user_attrs={"config": config, **attrs},
            params={"batch": config["batch"]},
            distributions={"batch": optuna.distributions.CategoricalDistribution([1, 2])}))

    done = optuna.trial.TrialState.COMPLETE
    add(space.reference("baseline", PINS), done, 100.0, role="baseline", outcome="ok")
    add(space.reference("vendor_recommended", PINS), done, 900.0, role="vendor_recommended", outcome="ok")
    add({"data_format": "channels_last", "batch": 2, "intra_threads": 1}, done, 1000.0, outcome="ok")
    add({"data_format": "channels_last", "batch": 1, "intra_threads": 1}, done, 800.0, outcome="ok")
    add({"data_format": "channels_first", "transpose_elimination": True, "batch": 2}, done, 700.0, outcome="ok")
    add({"data_format": "channels_first", "transpose_elimination": True, "batch": 1}, done, 600.0, outcome="ok")
    pruned = optuna.trial.TrialState.PRUNED
    add({"data_format": "channels_first", "onednn": False, "batch": 2}, pruned, outcome="pruned")
    fail = optuna.trial.TrialState.FAIL
    add({"data_format": "channels_first", "onednn": False, "intra_threads": 1}, fail, outcome="crashed")
    # says nothing of the configuration: not a known-bad one
    add({"data_format": "channels_first", "onednn": True, "intra_threads": 1}, fail, outcome="interrupted")
    return study


def test_best_configurations_come_first_and_bad_ones_are_priors(tmp_path: Path, fake_space, host) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    source = source_study(storage, fake_space, host.to_dict())
    study = optuna.create_study(study_name="new", storage=storage, direction="maximize",
                                sampler=search_sampler(0))

    start = warm_start(study, "src", fake_space, PINS, host)

    # the top 3 search configurations, best first; the vendor's (900) is measured anyway as a reference
    assert start.first == (2, 3, 4) and start.priors == (6, 7) and start.other_cpu is None
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs[WARM_ATTR] for t in waiting] == ["src trial 2", "src trial 3", "src trial 4"]
    assert all(t.user_attrs["role"] == "search" for t in waiting)
    assert waiting[0].system_attrs["fixed_params"] == {
        k: v for k, v in source.trials[2].user_attrs["config"].items()
        if k in ("batch", "data_format", "intra_threads", "onednn")}
    priors = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    assert [t.user_attrs["role"] for t in priors] == [PRIOR_ROLE] * 2
    assert all("config" not in t.user_attrs and "wall_seconds" not in t.user_attrs for t in priors)
    assert priors[0].params["onednn"] is False and priors[0].params["batch"] == 2
    assert "pruned in study src (trial 6)" in priors[0].user_attrs["reason"]
    # the sampler takes the priors' distributions as its own: asking works and draws a full configuration
    for _ in range(4):
        trial = study.ask()
        config = fake_space.suggest(trial, PINS)
        study.tell(trial, 1.0)
        assert config["batch"] in (1, 2)
    # applied once: a resumed run with the same --warm-start adds nothing
    again = warm_start(study, "src", fake_space, PINS, host)
    assert again == start and len(study.user_attrs[SOURCES_ATTR]) == 1
    assert len(study.get_trials(deepcopy=False)) == 2 + 4  # the priors and the 4 asked (3 of them enqueued)
    assert applied(study) == [start]


def test_a_source_from_another_cpu_is_labelled_and_listed(tmp_path: Path, fake_space, host) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    other = {**host.to_dict(), "cpu_model": "Some Other CPU 9000"}
    source_study(storage, fake_space, other, name="elsewhere")
    source_study(storage, fake_space, host.to_dict(), name="here")
    source_study(storage, fake_space, host.to_dict(), name="other-workload", workload="unet3d")
    study = optuna.create_study(study_name="new", storage=storage, direction="maximize")

    listed = earlier_studies(study, fake_space, host)
    start = warm_start(study, "elsewhere", fake_space, PINS, host)

    assert [(e.name, e.same_cpu) for e in listed] == [("here", True), ("elsewhere", False)]
    assert "another CPU: Some Other CPU 9000" in listed[1].describe()
    assert start.other_cpu == "Some Other CPU 9000"
    assert "recorded on another CPU (Some Other CPU 9000)" in start.describe()


@pytest.mark.parametrize(("source", "message"), [
    ("missing", "--warm-start missing: no such study in this storage (earlier studies of workload fake: src)"),
    ("new", "--warm-start new: that is this study"),
    ("unet", "--warm-start unet: that study tuned workload 'unet3d', not 'fake'"),
])
def test_a_bad_source_is_one_line(tmp_path: Path, fake_space, host, source: str, message: str) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    source_study(storage, fake_space, host.to_dict())
    source_study(storage, fake_space, host.to_dict(), name="unet", workload="unet3d")
    study = optuna.create_study(study_name="new", storage=storage, direction="maximize")

    with pytest.raises(UserError) as caught:
        warm_start(study, source, fake_space, PINS, host)

    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_run_measures_the_sources_best_after_the_references(tmp_path: Path, fake_space, host, capsys) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    space = dataclasses.replace(fake_space, agreement=None)
    first = RunOptions(trials=6, timeout_s=120, storage=storage, study_name="first", report_dir=tmp_path / "r1",
                       trial_timeout_s=20, confirm_repeats=0, seed=1)
    assert run_study(first, host, space, PINS) == 0
    assert "earlier studies" not in capsys.readouterr().out
    source = optuna.load_study(study_name="first", storage=storage)
    best = sorted((t for t in source.trials if t.state == optuna.trial.TrialState.COMPLETE
                   and t.user_attrs.get("role") == "search"), key=lambda t: -t.value)

    hint = RunOptions(trials=2, timeout_s=120, storage=storage, study_name="hint", report_dir=tmp_path / "r2",
                      trial_timeout_s=20, confirm_repeats=0)
    assert run_study(hint, host, space, PINS) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "earlier studies of workload fake in this storage: first (" in out and "--warm-start STUDY" in out

    second = dataclasses.replace(hint, study_name="second", report_dir=tmp_path / "r3", trials=4, warm_start="first")
    assert run_study(second, host, space, PINS) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warm start from study first:" in out
    trials = optuna.load_study(study_name="second", storage=storage).trials
    assert [t.user_attrs.get("role") for t in trials[:2]] == ["baseline", "vendor_recommended"]
    warm = [t for t in trials if WARM_ATTR in t.user_attrs and t.user_attrs.get("role") == "search"]
    assert warm and warm[0].number == 2 and warm[0].user_attrs[WARM_ATTR] == f"first trial {best[0].number}"
    assert warm[0].user_attrs["outcome"] in ("ok", "repeat", "pruned")  # measured here, fresh
    best_json = json.loads((tmp_path / "r3" / "best.json").read_text())
    assert PRIOR_ROLE not in json.dumps(best_json["trials"])  # the priors are no trials of this study
    assert best_json["warm_starts"][0]["source"] == "first"
    assert "Warm start from study first:" in (tmp_path / "r3" / "report.md").read_text()
