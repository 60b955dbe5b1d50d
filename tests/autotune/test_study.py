"""run_study over SQLite with the fake workload: references, storage, resume, failures, repeats."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
import pytest

from autotune.errors import UserError
from autotune.record import FIGURES
from autotune.runner import TrialRunner
from autotune.study import RunOptions, redact, run_study

# The TPE sampler's ``group`` option is experimental in Optuna; that is not under test.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

STUDY = "fake-test"
# Short steps keep a fake trial near its start-up time; the 8x baseline stays clearly slower.
PINS = {"step_seconds": 0.003}
# Everything but batch pinned: the search can only choose batch 1 (the baseline's config) or 2.
TINY_PINS = {**PINS, "data_format": "channels_last", "intra_threads": 0, "onednn": True}

MIXED_SPACE = """
[workload]
name = "fake"
module = "workloads.fake"
objective = { name = "voxels_per_s", unit = "voxels/s" }

[knobs.mode]
type = "categorical"
choices = ["infer"]
default = "infer"
target = "param"

[knobs.batch]
type = "categorical"
choices = [1, 2]
default = 1
target = "param"

[knobs.data_format]
type = "categorical"
choices = ["channels_first", "channels_last"]
default = "channels_last"
target = "param"
search = false

[knobs.onednn]
type = "bool"
default = true
target = "env"
env = "TF_ENABLE_ONEDNN_OPTS"
env_values = { true = "1", false = "0" }
search = false

[knobs.fault]
type = "categorical"
choices = ["none", "crash", "garbage"]
default = "none"
target = "param"

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
fault = "none"

[vendor_recommended]
data_format = "channels_last"
onednn = true
fault = "none"
"""

def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def options(tmp_path: Path, **changes) -> RunOptions:
    values = {
        "trials": 6,
        "timeout_s": 120.0,
        "storage": storage(tmp_path),
        "study_name": STUDY,
        "seed": 0,
        "report_dir": tmp_path / "report",
        "trial_timeout_s": 10.0,
        "confirm_repeats": 0,
        "memory_cap_mb": 300.0,
        **changes,
    }
    return RunOptions(**values)


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=storage(tmp_path))


def trials_of(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    return sorted(load(tmp_path).get_trials(), key=lambda t: t.number)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not psutil.pid_exists(proc.pid)
    return proc.pid


class InterruptingRunner(TrialRunner):
    """Behaves as if the user pressed Ctrl-C while the first trial ran."""

    def run(self, spec, on_step=None, on_wait=None, on_running=None):
        raise KeyboardInterrupt


def test_first_run_measures_references_first_and_writes_outputs(tmp_path, host, fake_space):
    status = run_study(options(tmp_path), host, fake_space, PINS)

    assert status == 0
    trials = trials_of(tmp_path)
    assert len(trials) == 6
    baseline, vendor = trials[0], trials[1]
    assert baseline.user_attrs["role"] == "baseline"
    assert vendor.user_attrs["role"] == "vendor_recommended"
    for reference in (baseline, vendor):
        assert reference.state == optuna.trial.TrialState.COMPLETE
        assert reference.user_attrs["outcome"] == "ok"
        assert "repeat_of" not in reference.user_attrs
    assert baseline.user_attrs["config"] == fake_space.reference("baseline", PINS)
    assert vendor.user_attrs["config"] == fake_space.reference("vendor_recommended", PINS)
    assert baseline.user_attrs["effective"]["env"]["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert vendor.user_attrs["effective"]["env"]["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert [t.user_attrs["role"] for t in trials[2:]] == ["search"] * 4
    for trial in trials:
        assert trial.state.is_finished()
        assert "config" in trial.user_attrs and "outcome" in trial.user_attrs
        if "repeat_of" not in trial.user_attrs:
            assert set(FIGURES) <= set(trial.user_attrs)
        if trial.user_attrs["outcome"] == "ok":
            assert trial.value == pytest.approx(trial.user_attrs["voxels_per_s"])
    study = load(tmp_path)
    assert study.user_attrs["host_fingerprint"] == host.fingerprint
    assert study.user_attrs["pins"] == PINS

    best = json.loads((tmp_path / "report" / "best.json").read_text())
    assert best["kind"] == "autotune-best"
    assert best["schema"] == 2
    assert best["study"] == STUDY
    assert best["host_fingerprint"] == host.fingerprint
    assert best["baseline"]["trial"] == 0
    assert best["vendor_recommended"]["trial"] == 1
    assert best["best"]["voxels_per_s"] >= best["vendor_recommended"]["voxels_per_s"]
    assert best["speedup"]["vs_baseline"]["value"] > 1
    low, high = best["speedup"]["vs_baseline"]["ci95"]
    assert low <= high
    assert best["speedup"]["vs_baseline"]["scope"] == "within one process each"  # run without confirmation
    assert sum(best["trials"].values()) == 6
    report = (tmp_path / "report" / "report.md").read_text()
    assert report.startswith(f"# autotune report: {STUDY}")
    assert "| baseline | 0 |" in report


def test_resume_continues_the_study_without_new_references(tmp_path, host, fake_space):
    assert run_study(options(tmp_path, trials=1), host, fake_space, PINS) == 0
    roles = [t.user_attrs.get("role") for t in trials_of(tmp_path)]
    assert roles == ["baseline", "vendor_recommended"]  # the vendor trial is still waiting
    assert trials_of(tmp_path)[1].state == optuna.trial.TrialState.WAITING

    assert run_study(options(tmp_path, trials=2), host, fake_space, PINS) == 0
    assert run_study(options(tmp_path, trials=2), host, fake_space, PINS) == 0

    trials = trials_of(tmp_path)
    assert len(trials) == 5
    roles = [t.user_attrs["role"] for t in trials]
    assert roles == ["baseline", "vendor_recommended", "search", "search", "search"]
    assert all(t.state.is_finished() for t in trials)


def test_study_where_every_trial_crashes_exits_1(tmp_path, host, fake_space):
    status = run_study(options(tmp_path, trials=3), host, fake_space, {**PINS, "fault": "crash"})

    assert status == 1
    trials = trials_of(tmp_path)
    assert len(trials) == 3
    for trial in trials:
        assert trial.state == optuna.trial.TrialState.FAIL
        if "repeat_of" in trial.user_attrs:
            continue
        assert trial.user_attrs["outcome"] == "crashed"
        assert "RuntimeError" in trial.user_attrs["reason"]
        assert "crashed as told" in trial.user_attrs["stderr_tail"]
    best = json.loads((tmp_path / "report" / "best.json").read_text())
    assert best["best"] is None
    assert best["speedup"]["vs_baseline"] is None
    assert "## Failed and pruned trials" in (tmp_path / "report" / "report.md").read_text()


def test_failures_are_recorded_and_the_study_goes_on(tmp_path, host, space_from_toml):
    space = space_from_toml(MIXED_SPACE)

    status = run_study(options(tmp_path, trials=8, sampler="random", seed=5), host, space, {})

    assert status == 0
    trials = trials_of(tmp_path)
    assert len(trials) == 8
    measured = [t for t in trials if "repeat_of" not in t.user_attrs]
    outcomes = {t.user_attrs["config"]["fault"]: t.user_attrs["outcome"] for t in measured}
    expected = {"none": "ok", "crash": "crashed", "garbage": "bad_output"}
    assert outcomes == {fault: expected[fault] for fault in outcomes}
    assert set(outcomes.values()) == {"ok", "crashed", "bad_output"}, "seed misses an outcome"
    for trial in measured:
        if trial.user_attrs["outcome"] != "ok":
            assert trial.state == optuna.trial.TrialState.FAIL
            assert trial.user_attrs["reason"]
    search_ok = [t for t in measured if t.user_attrs["role"] == "search"
                 and t.user_attrs["outcome"] == "ok"]
    assert search_ok, "seed gave no successful search trial"
    assert trials[-1].state.is_finished()


def test_orphaned_trial_is_failed_and_its_config_measured_again(tmp_path, host, fake_space):
    assert run_study(options(tmp_path, trials=2), host, fake_space, PINS) == 0
    study = load(tmp_path)
    params = {"batch": 2, "data_format": "channels_last", "intra_threads": 0, "onednn": True}
    orphan = study.ask()
    orphan.set_user_attr("role", "search")
    orphan.set_user_attr("config", fake_space.configure({**params, **PINS}))
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead_pid()}")
    study.enqueue_trial(params)

    assert run_study(options(tmp_path, trials=1), host, fake_space, PINS) == 0

    trials = trials_of(tmp_path)
    failed = trials[orphan.number]
    assert failed.state == optuna.trial.TrialState.FAIL
    assert failed.user_attrs["outcome"] == "interrupted"
    assert "driver was killed" in failed.user_attrs["reason"]
    again = trials[-1]
    assert again.params == params
    assert "repeat_of" not in again.user_attrs
    assert again.user_attrs["outcome"] == "ok"


@pytest.mark.parametrize("worker", ["this-host-live-driver", "other-host"])
def test_running_trial_of_a_live_or_remote_driver_is_left_alone(tmp_path, host, fake_space, worker):
    assert run_study(options(tmp_path, trials=1), host, fake_space, PINS) == 0
    study = load(tmp_path)
    running = study.ask()
    if worker == "other-host":
        running.set_user_attr("worker", f"not-{socket.gethostname()}:{dead_pid()}")
    else:
        running.set_user_attr("worker", f"{socket.gethostname()}:{os.getppid()}")

    assert run_study(options(tmp_path, trials=1), host, fake_space, PINS) == 0

    assert trials_of(tmp_path)[running.number].state == optuna.trial.TrialState.RUNNING


def test_interrupt_returns_130_and_resume_measures_the_baseline(tmp_path, host, fake_space):
    status = run_study(options(tmp_path), host, fake_space, PINS, runner=InterruptingRunner())

    assert status == 130
    (first,) = trials_of(tmp_path)[:1]
    assert first.state == optuna.trial.TrialState.FAIL
    assert first.user_attrs["outcome"] == "interrupted"
    assert "Ctrl-C" in first.user_attrs["reason"]

    assert run_study(options(tmp_path, trials=2), host, fake_space, PINS) == 0

    measured = [t for t in trials_of(tmp_path) if t.user_attrs.get("outcome") == "ok"]
    assert {t.user_attrs["role"] for t in measured} == {"baseline", "vendor_recommended"}
    best = json.loads((tmp_path / "report" / "best.json").read_text())
    assert best["speedup"]["vs_baseline"]["value"] > 1


def test_study_of_another_host_is_refused_unless_allowed(tmp_path, host, fake_space):
    assert run_study(options(tmp_path, trials=1), host, fake_space, PINS) == 0
    other = dataclasses.replace(host, cpu_model="Some Other CPU")
    assert other.fingerprint != host.fingerprint

    with pytest.raises(UserError, match=r"recorded on host .*--allow-mixed-hosts"):
        run_study(options(tmp_path, trials=1), other, fake_space, PINS)
    assert len(trials_of(tmp_path)) == 2

    allowed = options(tmp_path, trials=1, allow_mixed_hosts=True)
    assert run_study(allowed, other, fake_space, PINS) == 0
    assert load(tmp_path).user_attrs["host_fingerprint"] == host.fingerprint


def test_resume_with_other_pins_is_refused(tmp_path, host, fake_space):
    assert run_study(options(tmp_path, trials=1), host, fake_space, PINS) == 0

    with pytest.raises(UserError, match=r"started with --set step_seconds=0\.003"):
        run_study(options(tmp_path, trials=1), host, fake_space, {**PINS, "batch": 2})


def test_repeated_configs_are_answered_from_storage(tmp_path, host, fake_space, capsys):
    assert run_study(options(tmp_path, trials=6), host, fake_space, TINY_PINS) == 0

    trials = trials_of(tmp_path)
    assert len(trials) == 6
    by_number = {t.number: t for t in trials}
    measured = [t for t in trials if "repeat_of" not in t.user_attrs]
    repeats = [t for t in trials if "repeat_of" in t.user_attrs]
    keys = [fake_space.fingerprint_config(t.user_attrs["config"]) for t in measured]
    assert len(keys) == len(set(keys)) <= 3  # baseline, vendor, batch 2
    assert repeats, "six trials over three configs must repeat"
    for repeat in repeats:
        earlier = by_number[repeat.user_attrs["repeat_of"]]
        assert "repeat_of" not in earlier.user_attrs
        assert earlier.number < repeat.number
        assert repeat.user_attrs["config"] == earlier.user_attrs["config"]
        assert repeat.user_attrs["outcome"] == "repeat"
        assert repeat.state == earlier.state == optuna.trial.TrialState.COMPLETE
        assert repeat.value == earlier.value
    assert f"{len(repeats)} repeats answered from storage" in capsys.readouterr().out


def test_grid_search_stops_when_every_point_is_measured(tmp_path, host, fake_space):
    status = run_study(options(tmp_path, trials=30, sampler="grid"), host, fake_space, TINY_PINS)

    assert status == 0
    trials = trials_of(tmp_path)
    assert all(t.state.is_finished() for t in trials)
    grid = [t for t in trials if "grid_id" in t.system_attrs]
    assert len(trials) == len(grid) + 2 < 30  # the references, then each grid point once
    assert len({t.system_attrs["grid_id"] for t in grid}) == len(grid)
    assert {t.user_attrs["config"]["batch"] for t in grid} == {1, 2}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://tuner:s3cret@db.example:5432/optuna",
         "postgresql://tuner:***@db.example:5432/optuna"),
        ("postgresql+psycopg2://tuner:p@ss@db/optuna", "postgresql+psycopg2://tuner:***@db/optuna"),
        ("postgresql://tuner@db/optuna", "postgresql://tuner@db/optuna"),
        ("sqlite:///autotune.db", "sqlite:///autotune.db"),
        ("sqlite:////tmp/a@b.db", "sqlite:////tmp/a@b.db"),
    ],
)
def test_redact_hides_the_password(url, shown):
    assert redact(url) == shown


def test_storage_that_cannot_open_is_a_user_error_without_the_password(tmp_path, host, fake_space):
    url = "postgresql://tuner:s3cret@127.0.0.1:1/optuna"

    with pytest.raises(UserError, match="cannot open storage") as info:
        run_study(options(tmp_path, storage=url), host, fake_space, PINS)

    assert "s3cret" not in str(info.value)
    assert "tuner:***@127.0.0.1" in str(info.value)
    assert "\n" not in str(info.value)
