"""``autotune run --workload command`` end to end: real ``autotune`` processes, real programs (tiny
``python -c`` scripts whose speed depends on OMP_NUM_THREADS through a sleep), SQLite storage; then
``autotune exec`` with the winner; and bad input to a command workload as one line, exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autotune.contract import ContractError, parse_contract
from autotune.host import HostInfo
from autotune.launch import launch_for
from autotune.space import HostFacts, bundled_space, load_space

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
# Sleeps least with OMP_NUM_THREADS=2 (unset counts as 4); prints its own figure, items per second.
PROGRAM = ("import json, os, sys, time; n = int(os.environ.get(\"OMP_NUM_THREADS\") or 4); "
           "t = 0.004 * (1 + 2 * abs(n - 2)) * int(sys.argv[1].split(\"=\")[1]); time.sleep(t); "
           "print(\"@autotune \" + json.dumps({\"items_per_s\": 1 / t}))")
QUICK = ("--set", "steps=3", "--set", "warmup=1", "--set", "trial_seconds=0")
SPACE = f"""
[workload]
name = "sleepy"
command = [{json.dumps(PY)}, "-c", '{PROGRAM}', "--scale={{scale}}"]
figure_key = "items_per_s"
[workload.objective]
name = "items_per_s"
unit = "items/s"
direction = "maximize"
[workload.figures]
wall_seconds_per_run = "s"

[knobs.omp_num_threads]
type = "int"
low = 0
high = 4
default = 0
target = "env"
env = "OMP_NUM_THREADS"
env_values = {{ 0 = "default" }}

[knobs.scale]
type = "categorical"
choices = [1, 2]
default = 1
target = "arg"
search = false

[knobs.warmup]
type = "int"
low = 0
high = 10
default = 1
target = "param"
search = false

[knobs.steps]
type = "int"
low = 1
high = 100
default = 3
target = "param"
search = false

[knobs.trial_seconds]
type = "float"
low = 0.0
high = 60.0
default = 0.0
target = "param"
search = false

[baseline]
omp_num_threads = 0

[vendor_recommended]
omp_num_threads = "physical_cores"
"""


def autotune(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KMP_", "OMP_", "MKL_"))}
    env.update(COLUMNS="200", PYTHONPATH=str(REPO))
    return subprocess.run([PY, "-m", "autotune", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_args(tmp_path: Path, study: str, *extra: str) -> list[str]:
    return ["run", "--trials", "4", "--confirm-repeats", "1", "--no-profile", "--storage", url(tmp_path),
            "--study", study, "--report-dir", str(tmp_path / study), *QUICK, *extra]


def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def stored(tmp_path: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url(tmp_path)).get_trials(deepcopy=False)


def finish(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def winner_omp(tmp_path: Path, study: str) -> str | None:
    best = json.loads((tmp_path / study / "best.json").read_text())
    return best["best"]["env"].get("OMP_NUM_THREADS")


def test_a_printed_figure_is_tuned_and_exec_runs_the_winner(tmp_path: Path) -> None:
    (tmp_path / "sleepy.toml").write_text(SPACE)
    done = autotune([*run_args(tmp_path, "printed", "--space", str(tmp_path / "sleepy.toml")),
                     "--workload", "sleepy"], tmp_path)
    print(done.stdout)
    trials = stored(tmp_path, "printed")
    assert len(trials) >= 4
    # A search trial may be pruned on its printed step figures, or repeat a configuration (not run again).
    assert [t.user_attrs["outcome"] for t in trials[:2]] == ["ok", "ok"]
    measured = [t for t in trials[:4] if t.user_attrs["outcome"] == "ok"]
    assert all(t.user_attrs["outcome"] in ("ok", "pruned", "repeat") for t in trials)
    for trial in measured:
        omp = trial.user_attrs["config"]["omp_num_threads"]
        n = omp or 4
        assert trial.values[0] == pytest.approx(1 / (0.004 * (1 + 2 * abs(n - 2))))
    finish(done)
    assert "items/s" in done.stdout
    check_exec(tmp_path, "printed")


def test_wall_time_with_the_bundled_space_then_exec(tmp_path: Path) -> None:
    program = ("import os, time; n = int(os.environ.get('OMP_NUM_THREADS') or 4); "
               "time.sleep(0.02 * (1 + 2 * abs(n - 2)))")
    done = autotune([*run_args(tmp_path, "wall", "--workload", "command"), "--", PY, "-c", program], tmp_path)
    print(done.stdout)
    trials = stored(tmp_path, "wall")
    assert len(trials) >= 4
    first = trials[0]
    assert first.user_attrs["outcome"] == "ok", first.user_attrs.get("reason")
    assert first.values[0] == pytest.approx(1 / first.user_attrs["median_step_s"])
    finish(done)
    assert "runs/s" in done.stdout
    check_exec(tmp_path, "wall")


def check_exec(tmp_path: Path, study: str) -> None:
    done = autotune(["exec", "--study", study, "--storage", url(tmp_path), "--", PY, "-c",
                     "import os; print(os.environ.get('OMP_NUM_THREADS'))"], tmp_path)
    assert done.returncode == 0, done.stderr
    best = json.loads((tmp_path / study / "best.json").read_text())["best"]
    copies = int(best["config"].get("instances", 1))  # a multi-instance winner runs that many copies
    assert done.stdout.split() == [str(winner_omp(tmp_path, study))] * copies


# ---- bad input: one line, exit 2, nothing stored ----

BAD_SPACES = {
    "unknown_target": (SPACE.replace('target = "arg"', 'target = "argv"'), "is not one of"),
    "command_as_string": (SPACE.replace(f'command = [{json.dumps(PY)}, "-c", \'{PROGRAM}\', "--scale={{scale}}"]',
                                        'command = "python predict.py --scale={scale}"'), "is a string"),
    "placeholder_names_no_knob": (SPACE.replace("--scale={scale}", "--scale={scael}"),
                                  "placeholder {scael} names no knob"),
    "failing_check_command": (SPACE.replace("[workload.objective]",
                                            f'check = [{json.dumps(PY)}, "-c", \'import sys; '
                                            f'sys.exit("model.keras: no such file")\']\n[workload.objective]'),
                              "the check command exited with status 1: model.keras: no such file"),
}


@pytest.mark.parametrize("name", sorted(BAD_SPACES))
def test_a_bad_command_space_is_one_line_exit_2(name: str, tmp_path: Path) -> None:
    text, message = BAD_SPACES[name]
    assert text != SPACE
    (tmp_path / "space.toml").write_text(text)
    done = autotune([*run_args(tmp_path, "bad", "--space", str(tmp_path / "space.toml")), "--workload", "sleepy"],
                    tmp_path, timeout=120)
    assert_one_line(done, message)
    assert not (tmp_path / "studies.db").exists() or "bad" not in optuna.get_all_study_names(url(tmp_path))


@pytest.mark.parametrize(("program", "message"), [
    (["no-such-program-autotune", "--x"], "program 'no-such-program-autotune' not found"),
    ([PY, "-c", "pass", "--x={nope}"], "placeholder {nope} names no knob"),
    ([], "give it after --"),
])
def test_a_bad_program_on_the_command_line_is_one_line_exit_2(program: list[str], message: str, tmp_path: Path) -> None:
    done = autotune([*run_args(tmp_path, "bad", "--workload", "command"), *(["--", *program] if program else [])],
                    tmp_path, timeout=120)
    assert_one_line(done, message)


def assert_one_line(done: subprocess.CompletedProcess[str], message: str) -> None:
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("autotune: error: "), done.stderr
    assert message in lines[0]


# ---- the bundled space and the driver's side ----


def test_the_bundled_space_builds_the_wrapper_config(host: HostInfo, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    space = load_space(bundled_space("command"), HostFacts.of(host)).with_command(["python", "predict.py"])
    monkeypatch.chdir(tmp_path)
    baseline = launch_for(space, space.reference("baseline", {}), host)
    assert baseline.params["command"] == ["python", "predict.py"]
    assert baseline.params["cwd"] == str(tmp_path)  # the program's relative paths are the user's
    assert (baseline.params["objective"], baseline.params["direction"]) == ("runs_per_s", "maximize")
    assert {k: baseline.env[k] for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "LD_PRELOAD")} == dict.fromkeys(
        ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "LD_PRELOAD"))
    assert baseline.cpus is None
    vendor = launch_for(space, space.reference("vendor_recommended", {}), host)
    assert vendor.env["OMP_NUM_THREADS"] == str(host.physical_cores)
    assert vendor.env["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert vendor.env["KMP_BLOCKTIME"] == "1"
    assert vendor.cpus is not None


def test_the_quality_figure_reaches_the_wrapper_config_not_the_knobs(host: HostInfo, tmp_path: Path) -> None:
    from autotune.launch import knob_params
    from autotune.protocol import TrialConfig
    from autotune.runner import TrialSpec

    text = SPACE.replace('figure_key = "items_per_s"', 'figure_key = "items_per_s"\nquality_key = "accuracy"\n'
                         "quality_pattern = 'accuracy: ([0-9.]+)'")
    (tmp_path / "space.toml").write_text(text)
    space = load_space(tmp_path / "space.toml", HostFacts.of(host))
    params = launch_for(space, space.reference("baseline", {}), host).params
    assert (params["quality_key"], params["quality_pattern"]) == ("accuracy", "accuracy: ([0-9.]+)")
    spec = TrialSpec(module="workloads.command", config=TrialConfig("sleepy", params), timeout_s=1)
    assert not {"quality_key", "quality_pattern"} & set(knob_params(spec))


def test_a_command_space_may_name_the_wrapper_module_beside_its_command() -> None:
    table = {"name": "predict", "command": ["python", "p.py"],
             "objective": {"name": "runs_per_s", "unit": "runs/s"}}
    assert parse_contract({**table, "module": "workloads.command"}).command == ("python", "p.py")
    with pytest.raises(ContractError, match="not both"):
        parse_contract({**table, "module": "workloads.unet3d"})
