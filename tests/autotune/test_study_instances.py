"""Studies with an instances knob (fake workload): 1 x 2 against 2 x 1, the rules, --max-latency."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest

from autotune.confirm import candidates_of
from autotune.feasible import is_feasible
from autotune.space import HostFacts, load_space
from autotune.study import RunOptions, run_study

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")]
DATA = Path(__file__).resolve().parents[1] / "data"
STUDY = "instances"
INSTANCE_KNOBS = (Path(__file__).resolve().parents[1] / "data" / "fake_instances.toml").read_text()
PINS = {"step_seconds": 0.02, "data_format": "channels_last", "onednn": True, "intra_threads": 0, "batch": 1}


@pytest.fixture(scope="module")
def space(tmp_path_factory, host):
    text = (DATA / "fake.toml").read_text()
    text = text.replace('label = ["mode"]', 'label = ["mode"]\nlatency = "latency_per_sample_s"')
    text = text.replace("[knobs.intra_threads]\n", INSTANCE_KNOBS + "[knobs.intra_threads]\nthreads = true\n")
    text += '\n[workload.figures]\nsamples_per_s = "samples/s"\nlatency_per_sample_s = "s"\n'
    path = tmp_path_factory.mktemp("space") / "fake_instances.toml"
    path.write_text(text)
    return load_space(path, HostFacts.of(host))


def options(tmp_path: Path, **changes) -> RunOptions:
    values = {"trials": 8, "timeout_s": 300.0, "storage": f"sqlite:///{tmp_path / 'study.db'}",
              "study_name": STUDY, "sampler": "grid", "report_dir": tmp_path / "report", "trial_timeout_s": 20.0,
              "confirm_repeats": 2, "memory_cap_mb": 600.0, "full_report": True, **changes}
    return RunOptions(**values)


def test_study_measures_two_instances_against_one_and_reports_it(tmp_path, host, space):
    assert run_study(options(tmp_path), host, space, PINS) == 0

    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'study.db'}")
    best = json.loads((tmp_path / "report" / "best.json").read_text())
    assert best["best"]["instances"]["instances"] == 2  # two sleeping instances do twice the work
    layout = best["speedup"]["vs_layout"]
    assert layout["value"] > 1.4 and layout["runs"]["stage"] == "estimate"
    if HostFacts.of(host).rules == {"throughput_rule": (1, 2), "mlperf_rule": (1, 2)}:
        assert study.user_attrs["same_configuration"] == {"throughput_rule": "vendor_recommended",
                                                          "mlperf_rule": "vendor_recommended"}
        assert {t.user_attrs.get("role") for t in study.trials} >= {"baseline", "vendor_recommended"}
        assert "throughput_rule" not in {t.user_attrs.get("role") for t in study.trials}
    unusable = [t for t in study.trials if "not measured: instances" in str(t.user_attrs.get("reason"))]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in unusable)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Instances and the launchers' rules" in report
    assert "2 x 1 cores won against the best with one instance" in report
    assert "resolves to the `vendor_recommended` configuration on this host: measured once" in report


def test_max_latency_makes_a_trial_infeasible_but_keeps_it(tmp_path, host, space):
    # the baseline (channels_first, oneDNN off) is 8x slower per sample than anything else here
    pins = {k: v for k, v in PINS.items() if k not in ("data_format", "onednn")}
    opts = options(tmp_path, trials=3, confirm_repeats=0, sampler="random", max_latency_s=0.1)
    assert run_study(opts, host, space, pins) == 0
    study = optuna.load_study(study_name=STUDY, storage=opts.storage)
    baseline = next(t for t in study.trials if t.user_attrs.get("role") == "baseline")
    assert baseline.state == optuna.trial.TrialState.COMPLETE and not is_feasible(baseline)
    assert "over --max-latency 0.1 s" in baseline.user_attrs["infeasible"]
    assert study.best_trial.number != baseline.number
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Infeasible trials (--max-latency 0.1 s)" in report
    with pytest.raises(Exception, match=r"was started with --max-latency 0\.1"):
        run_study(options(tmp_path, trials=1, max_latency_s=0.5), host, space, pins)


def test_an_infeasible_trial_is_never_a_finalist(space):
    study = optuna.create_study(direction="maximize")
    config = space.configure({})
    fast = {**config, "batch": 2}
    study.add_trial(optuna.trial.create_trial(value=10.0, user_attrs={"config": fast, "role": "search"},
                                              constraints={"latency": 0.3}))
    study.add_trial(optuna.trial.create_trial(value=5.0, user_attrs={"config": config, "role": "search"},
                                              constraints={"latency": -0.1}))
    labels = [c.label for c in candidates_of(study, space, 3)]
    assert labels == ["trial 1"]


def test_a_layout_the_host_cannot_hold_is_one_line_exit_2(tmp_path, space):
    from autotune.cli import main

    cores = HostFacts.of(__import__("autotune.host", fromlist=["probe_host"]).probe_host(software=False)).counts[
        "physical_cores"]
    with pytest.raises(Exception, match="needs"):
        space.configure({"instances": 2, "cores_per_instance": cores})
    with pytest.raises(Exception, match="threads in an instance of 1 core"):
        space.configure({"instances": 2, "cores_per_instance": 1, "intra_threads": 2})
    assert main(["bench", "--space", str(space.path), "--set", f"instances={cores + 1}"]) == 2
