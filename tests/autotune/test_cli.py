from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autotune.host import find_allocators

REPO = Path(__file__).resolve().parents[2]
FAKE = str(REPO / "tests" / "data" / "fake.toml")
BAD_SPACES = REPO / "tests" / "data" / "bad_spaces"
BENCH = ["bench", "--workload", "fake", "--space", FAKE]
RUN = ["run", "--workload", "fake", "--space", FAKE]


def autotune(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KMP_", "OMP_"))}
    return subprocess.run(
        [sys.executable, "-m", "autotune", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def test_bench_fake_baseline_json(tmp_path: Path) -> None:
    done = autotune([*BENCH, "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    record = last_json(done.stdout)
    assert record["outcome"] == "ok"
    assert record["workload"] == "fake"
    assert record["voxels_per_s"] > 0
    assert len(record["step_seconds"]) == record["config"]["steps"]
    assert record["config"]["data_format"] == "channels_first"
    assert record["env"]["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert record["effective"]["env"]["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_bench_fake_vendor_recommended_json(tmp_path: Path) -> None:
    done = autotune([*BENCH, "--from", "vendor_recommended", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    record = last_json(done.stdout)
    assert record["outcome"] == "ok"
    assert record["voxels_per_s"] > 0
    assert record["config"]["data_format"] == "channels_last"
    assert record["env"]["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert record["effective"]["env"]["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert record["effective"]["env"]["KMP_BLOCKTIME"] == "1"


def test_bench_set_overrides_the_reference(tmp_path: Path) -> None:
    done = autotune([*BENCH, "--set", "onednn=on", "--set", "batch=2", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    record = last_json(done.stdout)
    assert record["config"]["batch"] == 2
    assert record["config"]["data_format"] == "channels_first"
    assert record["effective"]["env"]["TF_ENABLE_ONEDNN_OPTS"] == "1"


def test_failed_trial_exits_1_with_one_line_reason(tmp_path: Path) -> None:
    done = autotune([*BENCH, "--set", "fault=crash", "--json"], tmp_path)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("autotune: trial crashed: ")
    assert "crashed as told" in lines[0]
    assert "Traceback" not in done.stderr
    record = last_json(done.stdout)
    assert record["outcome"] == "crashed"
    assert "voxels_per_s" not in record and record["figure_names"] == []
    assert "RuntimeError" in record["stderr_tail"]


def test_host_json(tmp_path: Path) -> None:
    done = autotune(["host", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    host = json.loads(done.stdout)
    assert isinstance(host["fingerprint"], str)
    assert len(host["fingerprint"]) == 16
    assert host["logical_cpus"] >= len(host["usable_cpus"]) >= 1
    assert host["physical_cores"] >= 1


def test_help_exits_0(tmp_path: Path) -> None:
    done = autotune(["bench", "--help"], tmp_path)
    assert done.returncode == 0
    assert "--set" in done.stdout


NO_JEMALLOC = pytest.mark.skipif(
    "jemalloc" in find_allocators(), reason="this host has jemalloc, so it is not dropped"
)

BAD_INPUTS = [
    pytest.param(["frob"], "invalid choice", id="unknown_subcommand"),
    pytest.param([], "required", id="no_subcommand"),
    pytest.param(["bench", "--frob"], "--frob", id="unknown_option"),
    pytest.param(["bench", "--from", "fastest"], "--from", id="unknown_reference"),
    pytest.param([*BENCH, "--set", "batch"], "KNOB=VALUE", id="set_without_equals"),
    pytest.param([*BENCH, "--set", "=2"], "KNOB=VALUE", id="set_without_name"),
    pytest.param([*BENCH, "--set", "nope=1"], "unknown knob 'nope'", id="set_unknown_knob"),
    pytest.param([*BENCH, "--set", "intra_threads=100000"], "outside", id="set_int_out_of_range"),
    pytest.param([*BENCH, "--set", "intra_threads=two"], "not an integer", id="set_int_not_int"),
    pytest.param([*BENCH, "--set", "onednn=maybe"], "not a boolean", id="set_bad_bool"),
    pytest.param([*BENCH, "--set", "batch=3"], "not one of", id="set_not_a_choice"),
    pytest.param([*BENCH, "--set", "patch=16,16"], "shape", id="set_bad_shape"),
    pytest.param([*BENCH, "--set", "allocator=jemalloc"], "jemalloc was not found",
                 id="set_dropped_choice", marks=NO_JEMALLOC),
    pytest.param(["bench", "--space", str(BAD_SPACES / "unavailable_choices.toml"), "--set",
                  "batch=2"], "'2' is not available here (the CPU lacks no_such_cpu_flag)",
                 id="set_choice_needing_missing_cpu_flag"),
    pytest.param(["bench", "--space", str(BAD_SPACES / "unavailable_choices.toml"), "--set",
                  "allocator=hoard"], "hoard was not found on this host",
                 id="set_allocator_not_found"),
    pytest.param(["bench", "--space", "missing.toml"], "missing.toml: search-space file not found",
                 id="space_missing"),
    pytest.param(["bench", "--space", str(BAD_SPACES / "not_toml.toml")], "not valid TOML",
                 id="space_not_toml"),
    pytest.param(["bench", "--space", str(BAD_SPACES / "knob_typo.toml")], "'choises'",
                 id="space_unknown_key"),
    pytest.param(["bench", "--space", str(BAD_SPACES)], "cannot read", id="space_is_directory"),
    pytest.param(["bench", "--workload", "../etc/passwd"], "not a plain name",
                 id="workload_path_characters"),
    pytest.param(["bench", "--workload", "nosuch"], "no search space", id="workload_without_space"),
    pytest.param([*BENCH, "--data-dir", "no/such/dir"], "--data-dir", id="data_dir_missing"),
    pytest.param([*BENCH, "--data-dir", FAKE], "not a directory", id="data_dir_is_file"),
    pytest.param([*BENCH, "--trial-timeout", "0"], "--trial-timeout", id="trial_timeout_zero"),
    pytest.param([*BENCH, "--memory-cap", "-5"], "--memory-cap", id="memory_cap_negative"),
    pytest.param([*RUN, "--trials", "0"], "--trials", id="trials_zero"),
    pytest.param([*RUN, "--trials", "many"], "'many' is not an integer", id="trials_not_int"),
    pytest.param([*RUN, "--timeout", "-1"], "--timeout", id="timeout_negative"),
    pytest.param([*RUN, "--timeout", "soon"], "'soon' is not a number", id="timeout_not_number"),
    pytest.param([*RUN, "--sampler", "cmaes"], "--sampler", id="unknown_sampler"),
    pytest.param([*BENCH, "--set", "fault=bad_input"], "autotune: trial bad_input: ",
                 id="trial_reports_bad_input"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = autotune(args, tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("autotune: ")
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_top_level_help_is_written_for_users(tmp_path: Path) -> None:
    done = autotune(["--help"], tmp_path)

    assert done.returncode == 0
    assert "one small function per subcommand" not in done.stdout
    assert "autotune run --workload unet3d" in done.stdout
    assert "reports/<study>/report.html" in done.stdout and "autotune.db" in done.stdout


@pytest.mark.parametrize(("value", "unit", "text"), [
    (1.94e6, "voxels/s", "1.94 M voxels/s"), (82_327.0, "voxels/s", "82.33 k voxels/s"),
    (41.2, "samples/s", "41.2 samples/s"), (0.0243, "s", "0.0243 s"), (None, "s", "-"), (2.5e9, "", "2.50 G"),
])
def test_figures_are_shown_with_their_unit(value, unit, text) -> None:
    from autotune.console import format_figure

    assert format_figure(value, unit) == text
