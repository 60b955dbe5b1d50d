"""The workload contract: what a [workload] table may declare, and a study that minimizes a latency."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autotune.contract import COMMAND_MODULE, ContractError, Objective, parse_contract
from autotune.space import HostFacts, SpaceError, load_space
from autotune.study import RunOptions, default_study_name, run_study

FAKE = Path(__file__).resolve().parents[1] / "data" / "fake.toml"
OBJECTIVE = {"name": "samples_per_s", "unit": "samples/s", "direction": "maximize"}


def test_a_module_workload_declares_its_objective_figures_and_labels():
    contract = parse_contract({"name": "net", "module": "workloads.fake", "label": ["mode"],
                               "objective": OBJECTIVE, "figures": {"latency_per_sample_s": "s"}})

    assert contract.objective == Objective("samples_per_s", "samples/s", "maximize")
    assert contract.figures == {"latency_per_sample_s": "s"} and contract.label == ("mode",)
    assert not contract.is_command and contract.command is None


def test_a_command_workload_runs_under_the_wrapper():
    contract = parse_contract({"name": "job", "command": ["python", "run.py", "--batch={batch}"],
                               "objective": OBJECTIVE, "figure_key": "samples_per_s"})

    assert contract.is_command and contract.module == COMMAND_MODULE
    assert contract.placeholders() == {"batch"}
    assert (contract.quality_key, contract.quality_pattern) == (None, None)


def test_a_command_workload_may_declare_a_quality_figure():
    contract = parse_contract({"name": "job", "command": ["python", "run.py"], "objective": OBJECTIVE,
                               "quality_key": "accuracy", "quality_pattern": r"accuracy: ([0-9.]+)"})
    assert (contract.quality_key, contract.quality_pattern) == ("accuracy", r"accuracy: ([0-9.]+)")


@pytest.mark.parametrize(("table", "message"), [
    ({"name": "job", "command": "python run.py --batch 2", "objective": OBJECTIVE},
     "is a string; give an argv list"),
    ({"name": "job", "command": [], "objective": OBJECTIVE}, "non-empty list"),
    ({"name": "job", "module": "workloads.fake"}, "workload.objective: missing"),
    ({"name": "job", "module": "workloads.fake", "objective": {**OBJECTIVE, "direction": "up"}},
     "direction: 'up' is not one of maximize, minimize"),
    ({"name": "job", "module": "workloads.fake", "objective": {**OBJECTIVE, "name": "a b"}}, "not a figure name"),
    ({"name": "job", "module": "workloads.fake", "objective": OBJECTIVE, "check": ["true"]},
     "only a command workload names a check command"),
    ({"name": "job", "command": ["x"], "objective": OBJECTIVE, "figure_pattern": "no group"},
     "needs exactly one group"),
    ({"name": "job", "command": ["x"], "objective": OBJECTIVE, "figure_pattern": "("}, "not a regular expression"),
    ({"name": "job", "objective": OBJECTIVE}, "workload.module: missing"),
    ({"name": "job", "module": "workloads.fake", "objective": OBJECTIVE, "quality_key": "accuracy"},
     "only for a command workload"),
    ({"name": "job", "command": ["x"], "objective": OBJECTIVE, "quality_pattern": "acc ([0-9.]+)"},
     "workload.quality_pattern: name the figure it reads with quality_key"),
    ({"name": "job", "command": ["x"], "objective": OBJECTIVE, "quality_key": "top-1"}, "not a figure name"),
    ({"name": "job", "command": ["x"], "objective": OBJECTIVE, "quality_key": "acc", "quality_pattern": "acc"},
     "workload.quality_pattern: needs exactly one group"),
    ({"name": "job", "command": ["x"], "objective": OBJECTIVE, "quality_key": "samples_per_s"}, "is the objective"),
    ({"name": "job", "module": "workloads.fake", "objective": OBJECTIVE, "shell": True}, "unknown key 'shell'"),
])
def test_bad_contracts_name_the_key(table, message):
    with pytest.raises(ContractError, match=message.replace("(", r"\(")):
        parse_contract(table)


def _space(tmp_path: Path, host, old: str, new: str):
    text = FAKE.read_text()
    assert old in text
    path = tmp_path / "space.toml"
    path.write_text(text.replace(old, new, 1))
    return load_space(path, HostFacts.of(host))


def test_a_placeholder_must_name_a_knob_and_an_arg_knob_must_be_used(tmp_path, host):
    module = 'module = "workloads.fake"\n'
    with pytest.raises(SpaceError, match=r"placeholder \{nope\} names no knob"):
        _space(tmp_path, host, module, 'command = ["python", "x.py", "--n={nope}"]\n')
    with pytest.raises(SpaceError, match="target: 'nowhere' is not one of"):
        _space(tmp_path, host, 'target = "env"\nenv = "TF_ENABLE_ONEDNN_OPTS"', 'target = "nowhere"\nenv = "X"')


def test_the_default_study_name_changes_with_what_is_tuned(host, fake_space):
    first = default_study_name(fake_space, {"batch": 2}, host)

    assert first.startswith("fake-infer-") and len(first.rsplit("-", 1)[1]) == 8
    assert default_study_name(fake_space, {"batch": 2}, host) == first
    assert default_study_name(fake_space, {"batch": 1}, host) != first
    assert default_study_name(fake_space, {"mode": "train"}, host).startswith("fake-train-")


LATENCY = """objective = { name = "latency_per_sample_s", unit = "s", direction = "minimize" }"""


def test_a_study_can_minimize_a_latency(tmp_path, host):
    space = _space(tmp_path, host, 'objective = { name = "voxels_per_s", unit = "voxels/s", direction = "maximize" }',
                   LATENCY)
    options = RunOptions(trials=6, timeout_s=120, storage=f"sqlite:///{tmp_path / 's.db'}", study_name="lat",
                         report_dir=tmp_path / "r", trial_timeout_s=10, confirm_top=2, confirm_repeats=2)

    assert run_study(options, host, space, {}) == 0

    study = optuna.load_study(study_name="lat", storage=options.storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.metric_names == ["latency_per_sample_s (s)"]
    assert study.user_attrs["objective"]["direction"] == "minimize"
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    baseline, winner = best["baseline"]["latency_per_sample_s"], best["best"]["latency_per_sample_s"]
    assert winner < baseline  # lower is better: the fake's channels_last + oneDNN beat the baseline
    assert best["speedup"]["vs_baseline"]["value"] > 1  # "times better", whichever way the figure points
    assert best["figures"]["best"]["latency_per_sample_s"] < best["figures"]["baseline"]["latency_per_sample_s"]


def test_a_file_knob_is_checked_and_its_content_names_the_study(tmp_path, host):
    space = _space(tmp_path, host, "[knobs.batch]", '[knobs.model]\ntype = "file"\ndefault = ""\ntarget = "param"\n'
                   'search = false\n\n[knobs.batch]')
    model = tmp_path / "model.keras"
    model.write_bytes(b"weights one")
    pins = space.parse_assignments([f"model={model}"])
    first = default_study_name(space, pins, host)
    model.write_bytes(b"weights two")  # retrained in place: another study

    assert default_study_name(space, pins, host) != first
    assert not space.knobs["model"].searchable()
    with pytest.raises(SpaceError, match=r"model: .*missing\.keras does not exist"):
        space.parse_assignments([f"model={tmp_path / 'missing.keras'}"])
    with pytest.raises(SpaceError, match="is not a file"):
        space.parse_assignments([f"model={tmp_path}"])
