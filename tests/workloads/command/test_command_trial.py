"""The command wrapper as the driver runs it: a real ``python -m workloads.command`` child per trial,
running real programs (tiny ``python -c`` scripts), through :class:`autotune.runner.TrialRunner`."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from autotune.protocol import Outcome, TrialConfig
from autotune.runner import TrialOutcome, TrialRunner, TrialSpec
from workloads.command.trial import BadInput, pattern_figure, printed_figures, substitute

PY = sys.executable


def params(command: list[str], **extra: Any) -> dict[str, Any]:
    """A wrapper config as autotune.launch._command_params builds it, measuring as little as possible."""
    base = {"command": command, "check_command": None, "args": {}, "figure_key": None, "figure_pattern": None,
            "objective": "runs_per_s", "direction": "maximize", "cwd": None,
            "warmup": 1, "steps": 3, "trial_seconds": 0.0, "run_timeout": 0.0}
    return {**base, **extra}


def run_trial(config: dict[str, Any], *, check: bool = False, timeout_s: float = 60.0) -> TrialOutcome:
    spec = TrialSpec(module="workloads.command", config=TrialConfig("command", config), timeout_s=timeout_s,
                     check=check)
    return TrialRunner().run(spec)


def script(code: str) -> list[str]:
    return [PY, "-c", code]


# ---- placeholders ----


def test_a_placeholder_is_text_inside_its_one_argument() -> None:
    args = {"batch": "8", "v": "a b;c"}
    assert substitute(["p", "--batch={batch}", "{v}", "x{batch}y{batch}"], args) == [
        "p", "--batch=8", "a b;c", "x8y8"]
    with pytest.raises(BadInput, match=r"\{nope\} names no knob"):
        substitute(["--x={nope}"], args)


def test_a_hostile_value_is_never_evaluated(tmp_path: Path) -> None:
    hostile = f"$(touch {tmp_path}/p1); touch {tmp_path}/p2 && `touch {tmp_path}/p3` ~ *"
    record = tmp_path / "argv.json"
    code = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"
    done = run_trial(params([PY, "-c", code, str(record), "--x={v}", "{v}"], args={"v": hostile}, steps=1))
    assert done.outcome is Outcome.OK, done.reason
    assert json.loads(record.read_text()) == [f"--x={hostile}", hostile]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["argv.json"]


def test_an_unknown_placeholder_at_run_time_is_bad_input() -> None:
    done = run_trial(params([*script("pass"), "--x={nope}"]))
    assert done.outcome is Outcome.BAD_INPUT
    assert "{nope}" in done.reason


# ---- how the figure is read ----


def test_wall_time_gives_runs_per_second_and_one_step_per_run() -> None:
    done = run_trial(params(script("import time; time.sleep(0.02)")))
    assert done.outcome is Outcome.OK, done.reason
    result = done.result
    assert len(result.step_seconds) == 3 and len(result.warmup_seconds) == 1
    assert result.work_per_step == 1.0
    assert result.figures["runs_per_s"] == pytest.approx(1 / result.median_step_s)
    assert result.figures["wall_seconds_per_run"] == result.median_step_s >= 0.02
    assert result.effective["figure"] == "wall time per run"


def test_wall_time_minimized_is_seconds_per_run() -> None:
    done = run_trial(params(script("pass"), objective="seconds_per_run", direction="minimize"))
    assert done.outcome is Outcome.OK, done.reason
    assert done.result.figures["seconds_per_run"] == done.result.median_step_s


COUNTING = ("import json, pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text()) if p.exists() else 0; "
            "p.write_text(str(n + 1)); print('noise'); print('@autotune ' + json.dumps({KEY: 10.0 * (n + 1), "
            "'samples_per_s': 2.0})); print('@autotune {\"kind\": \"error\", \"message\": \"not the protocol\"}')")


def test_a_printed_figure_is_the_median_of_the_timed_runs(tmp_path: Path) -> None:
    code = COUNTING.replace("KEY", "'items_per_s'")
    done = run_trial(params([*script(code), str(tmp_path / "n")], figure_key="items_per_s", objective="items_per_s"))
    # The program's own @autotune lines (even a protocol-shaped error) never reach the driver.
    assert done.outcome is Outcome.OK, done.reason
    figures = done.result.figures
    assert figures["items_per_s"] == 30.0  # runs 2, 3, 4 print 20, 30, 40; run 1 was the warm-up
    assert figures["samples_per_s"] == 2.0
    assert figures["wall_seconds_per_run"] == done.result.median_step_s
    assert done.result.work_per_step == pytest.approx(30.0 * done.result.median_step_s)


def test_without_figure_key_a_printed_objective_is_read(tmp_path: Path) -> None:
    code = COUNTING.replace("KEY", "'runs_per_s'")
    done = run_trial(params([*script(code), str(tmp_path / "n")]))
    assert done.outcome is Outcome.OK, done.reason
    assert done.result.figures["runs_per_s"] == 30.0
    assert done.result.effective["figure"] == "printed @autotune key runs_per_s"


def test_figure_pattern_reads_the_last_match() -> None:
    code = "print('throughput: 1.5 items/s'); print('throughput: 7.25 items/s')"
    done = run_trial(params(script(code), figure_pattern=r"throughput: ([0-9.]+)", objective="items_per_s"))
    assert done.outcome is Outcome.OK, done.reason
    assert done.result.figures["items_per_s"] == 7.25


def test_figure_readers() -> None:
    out = '@autotune {"a": 1, "b": "x"}\nlog\n@autotune {not json\n@autotune {"a": 2.5, "c": true}\n'
    assert printed_figures(out) == {"a": 2.5}
    import re

    assert pattern_figure("v=1\nv=oops\nv=3\n", re.compile(r"v=(\S+)")) == 3.0
    assert pattern_figure("nothing", re.compile(r"v=(\S+)")) is None


# ---- the quality figure ----

# Prints its accuracy: 0.9, 0.8, 0.95, 0.85 on runs 1 to 4 (run 1 is the warm-up), and a text line.
QUALITY = ("import json, pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text()) if p.exists() else 0; "
           "p.write_text(str(n + 1)); a = [0.9, 0.8, 0.95, 0.85][n]; print('top-1 agreement: ' + str(a)); "
           "print('@autotune ' + json.dumps({'accuracy': a}))")


def test_a_quality_key_gives_the_median_lowest_and_highest_of_the_timed_runs(tmp_path: Path) -> None:
    done = run_trial(params([*script(QUALITY), str(tmp_path / "n")], quality_key="accuracy"))
    assert done.outcome is Outcome.OK, done.reason
    figures = done.result.figures
    assert (figures["accuracy"], figures["accuracy_min"], figures["accuracy_max"]) == (0.85, 0.8, 0.95)
    assert done.result.effective["quality"] == "printed @autotune key accuracy"


def test_a_quality_pattern_reads_stdout_under_the_key_name(tmp_path: Path) -> None:
    done = run_trial(params([*script(QUALITY.replace("@autotune", "")), str(tmp_path / "n")], quality_key="top1",
                            quality_pattern=r"top-1 agreement: ([0-9.]+)"))
    assert done.outcome is Outcome.OK, done.reason
    assert (done.result.figures["top1"], done.result.figures["top1_min"]) == (0.85, 0.8)
    assert "accuracy" not in done.result.figures


@pytest.mark.parametrize(("code", "extra"), [
    ("print('@autotune {\"samples\": 3}')", {}),
    ("print('@autotune {\"accuracy\": NaN}')", {}),
    ("print('accuracy: n/a')", {"quality_pattern": r"accuracy: (\S+)"}),
])
def test_a_run_without_its_quality_figure_is_bad_output(code: str, extra: dict[str, str]) -> None:
    done = run_trial(params(script(code), quality_key="accuracy", **extra))
    assert done.outcome is Outcome.BAD_OUTPUT
    assert done.reason.startswith("a run printed no quality figure accuracy") and "\n" not in done.reason
    assert done.result is None


def test_a_quality_pattern_without_its_name_is_bad_input() -> None:
    done = run_trial(params(script("pass"), quality_pattern=r"acc ([0-9.]+)"))
    assert done.outcome is Outcome.BAD_INPUT
    assert done.reason == "config: quality_pattern needs a quality_key naming its figure"


# ---- the program's environment and folder ----


def test_the_program_gets_the_param_knobs_and_runs_in_cwd(tmp_path: Path) -> None:
    (tmp_path / "input.txt").write_text("here")
    code = ("import json, os; p = json.loads(os.environ['AUTOTUNE_PARAMS']); "
            "print('@autotune ' + json.dumps({'steps_seen': p['steps'], 'has_command': int('command' in p), "
            "'input': len(open('input.txt').read())}))")
    done = run_trial(params(script(code), cwd=str(tmp_path)))
    assert done.outcome is Outcome.OK, done.reason
    assert done.result.figures["steps_seen"] == 3
    assert done.result.figures["has_command"] == 0
    assert done.result.figures["input"] == 4


# ---- failures are recorded, with reasons ----


def test_a_program_that_exits_non_zero_crashes_the_trial_with_its_last_stderr_line() -> None:
    code = "import sys; print('first', file=sys.stderr); print('cannot open scan.nii.gz', file=sys.stderr); sys.exit(3)"
    done = run_trial(params(script(code)))
    assert done.outcome is Outcome.CRASHED
    assert "the program exited with status 3: cannot open scan.nii.gz" in done.reason
    assert "first" in done.stderr_tail  # the program's stderr passes through


def test_a_program_that_hangs_times_the_trial_out() -> None:
    done = run_trial(params(script("import time; time.sleep(60)")), timeout_s=2)
    assert done.outcome is Outcome.TIMED_OUT


def test_run_timeout_stops_one_run() -> None:
    done = run_trial(params(script("import time; time.sleep(60)"), run_timeout=0.5))
    assert done.outcome is Outcome.CRASHED
    assert "ran longer than run_timeout=0.5s" in done.reason


def test_a_program_that_prints_no_figure_crashes_the_trial() -> None:
    done = run_trial(params(script("print('done')"), figure_key="samples_per_s", objective="samples_per_s"))
    assert done.outcome is Outcome.CRASHED
    assert "the program printed no figure samples_per_s" in done.reason
    pattern = run_trial(params(script("print('done')"), figure_pattern=r"rate ([0-9.]+)"))
    assert pattern.outcome is Outcome.CRASHED
    assert "printed no figure matching figure_pattern" in pattern.reason


# ---- check mode ----


def test_check_finds_the_program_and_runs_the_check_command() -> None:
    done = run_trial(params(script("pass"), check_command=script("pass")), check=True)
    assert done.outcome is Outcome.OK, done.reason
    assert done.checked["program"] == PY


def test_check_a_missing_program_is_bad_input(tmp_path: Path) -> None:
    done = run_trial(params(["no-such-program-autotune", "x"]), check=True)
    assert (done.outcome, done.reason) == (Outcome.BAD_INPUT, "program 'no-such-program-autotune' not found")
    relative = run_trial(params(["./missing.sh"], cwd=str(tmp_path)), check=True)
    assert (relative.outcome, relative.reason) == (Outcome.BAD_INPUT, "program './missing.sh' not found")


def test_check_a_failing_check_command_is_bad_input_with_its_last_stderr_line() -> None:
    failing = script("import sys; sys.exit('model.keras: no such file')")
    done = run_trial(params(script("pass"), check_command=failing), check=True)
    assert done.outcome is Outcome.BAD_INPUT
    assert done.reason == "the check command exited with status 1: model.keras: no such file"


def test_step_messages_carry_the_printed_figure(tmp_path: Path) -> None:
    seen: list[list[float]] = []
    code = COUNTING.replace("KEY", "'items_per_s'")
    spec = TrialSpec(module="workloads.command", timeout_s=60, config=TrialConfig(
        "command", params([*script(code), str(tmp_path / "n")], figure_key="items_per_s")))
    TrialRunner().run(spec, on_step=lambda steps, progress: seen.append(progress["step_figures"]) and False)
    assert seen[-1] == [20.0, 30.0, 40.0]
    assert statistics.median(seen[-1]) == 30.0


def test_any_workload_name_runs_under_the_wrapper() -> None:
    spec = TrialSpec(module="workloads.command", timeout_s=60,
                     config=TrialConfig("my_predict", params(script("pass"), steps=1)))
    done = TrialRunner().run(spec)
    assert done.outcome is Outcome.OK, done.reason


@pytest.mark.tf
def test_the_keras_example_reports_samples_per_second_and_its_agreement(tmp_path: Path) -> None:
    import subprocess

    example = Path(__file__).resolve().parents[3] / "examples" / "predict.py"
    labels = tmp_path / "labels.npy"
    saved = subprocess.run([PY, str(example), "--batches", "1", "--batch", "8", "--save-labels", str(labels)],
                           capture_output=True, text=True, timeout=300)
    assert saved.returncode == 0, saved.stderr[-2000:]
    config = params([PY, str(example), "--batches", "2", "--report", "--labels", str(labels)],
                    figure_key="samples_per_s", objective="samples_per_s", quality_key="top1_agreement",
                    warmup=0, steps=1, batch=3)
    done = run_trial(config, timeout_s=300)
    assert done.outcome is Outcome.OK, done.reason + done.stderr_tail[-500:]
    assert done.result.figures["samples_per_s"] > 0
    # Another batch size predicts the same fixed inputs: the same classes.
    assert done.result.figures["top1_agreement_min"] == 1.0
