from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autotune.errors import UserError
from autotune.export import LaunchRecord, render
from autotune.launcher import check_host, child_env
from autotune.protocol import SCHEMA_VERSION
from autotune.summary import BEST_KIND

PARAMS = {"data_format": "channels_last", "intra_threads": 2, "batch": 1}
USABLE = sorted(os.sched_getaffinity(0))
PROBE = (
    "import json, os; print(json.dumps({'env': dict(os.environ), 'pid': os.getpid(),"
    " 'cpus': sorted(os.sched_getaffinity(0))}))"
)


def write_best(folder: Path, env: Any, cpus: Any = None, **roles: Any) -> Path:
    best = {"trial": 3, "role": "search", "config": {}, "env": env, "params": PARAMS, "cpus": cpus}
    document = {
        "schema": SCHEMA_VERSION,
        "kind": BEST_KIND,
        "study": "s",
        "workload": "unet3d",
        "host_fingerprint": "f",
        "host": {},
        "best": best,
        "baseline": roles.get("baseline"),
        "vendor_recommended": None,
    }
    path = folder / "best.json"
    path.write_text(json.dumps(document))
    return path


def launch(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autotune", "exec", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def run_exec(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str, int]:
    proc = launch(args, env)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err, proc.pid


def record(env: dict[str, str | None], cpus: tuple[int, ...] | None = None) -> LaunchRecord:
    return LaunchRecord(
        study="s", workload="w", role="best", trial=1, env=env, cpus=cpus, params=PARAMS
    )


def test_the_command_sees_the_environment_and_the_affinity(tmp_path: Path) -> None:
    value = "a b 'c' \"d\" $(touch x) `e`\nf"
    cpu = USABLE[0]
    path = write_best(tmp_path, {"AT_SET": value, "AT_GONE": None}, cpus=[cpu])
    parent = {**os.environ, "AT_GONE": "still here", "AT_KEPT": "kept"}

    status, out, err, pid = run_exec(
        ["--config", str(path), "--", sys.executable, "-c", PROBE], parent
    )

    assert status == 0, err
    seen = json.loads(out)
    assert seen["env"]["AT_SET"] == value
    assert "AT_GONE" not in seen["env"]
    assert seen["env"]["AT_KEPT"] == "kept"
    assert json.loads(seen["env"]["AUTOTUNE_PARAMS"]) == PARAMS
    assert seen["cpus"] == [cpu]
    # The command replaced autotune: same process, nothing in between to forward signals.
    assert seen["pid"] == pid
    assert not (tmp_path / "x").exists()


def test_without_cpus_the_affinity_is_left_alone(tmp_path: Path) -> None:
    path = write_best(tmp_path, {})

    status, out, err, _ = run_exec(["--config", str(path), "--", sys.executable, "-c", PROBE])

    assert status == 0, err
    assert json.loads(out)["cpus"] == USABLE


def test_the_exit_status_passes_through(tmp_path: Path) -> None:
    path = write_best(tmp_path, {})

    status, _, err, _ = run_exec(
        ["--config", str(path), "--", sys.executable, "-c", "import sys; sys.exit(7)"]
    )

    assert status == 7
    assert err == ""


def test_a_signal_that_ends_the_command_passes_through(tmp_path: Path) -> None:
    path = write_best(tmp_path, {})
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"

    status, _, _, _ = run_exec(["--config", str(path), "--", sys.executable, "-c", suicide])

    assert status == -signal.SIGTERM


def test_a_signal_sent_to_the_launcher_reaches_the_command(tmp_path: Path) -> None:
    path = write_best(tmp_path, {})
    wait = (
        "import signal, sys, time\n"
        "def bye(*_):\n    print('got SIGTERM', flush=True)\n    sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = launch(["--config", str(path), "--", sys.executable, "-c", wait])
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"

    proc.send_signal(signal.SIGTERM)

    out, _ = proc.communicate(timeout=30)
    assert out == "got SIGTERM\n"
    assert proc.returncode == 3


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_signals_python_ignores_are_restored_for_the_command(tmp_path: Path) -> None:
    path = write_best(tmp_path, {})

    status, out, err, _ = run_exec(
        ["--config", str(path), "--", "grep", "SigIgn", "/proc/self/status"]
    )

    assert status == 0, err
    ignored = int(out.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGXFSZ - 1))


def test_a_missing_command_is_127_in_one_line(tmp_path: Path) -> None:
    path = write_best(tmp_path, {})

    status, out, err, _ = run_exec(["--config", str(path), "--", "no-such-command-autotune"])

    assert status == 127
    assert out == ""
    assert err == "autotune: error: no-such-command-autotune: command not found\n"


def test_a_file_that_is_not_executable_is_126(tmp_path: Path) -> None:
    path = write_best(tmp_path, {})
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")

    status, _, err, _ = run_exec(["--config", str(path), "--", str(script)])

    assert status == 126
    assert err == f"autotune: error: {script}: Permission denied\n"


def test_an_exported_json_record_launches_too(tmp_path: Path) -> None:
    exported = tmp_path / "best-export.json"
    exported.write_text(render(record({"AT_SET": "from export"}, cpus=(USABLE[-1],)), "json"))

    status, out, err, _ = run_exec(["--config", str(exported), "--", sys.executable, "-c", PROBE])

    assert status == 0, err
    seen = json.loads(out)
    assert seen["env"]["AT_SET"] == "from export" and seen["cpus"] == [USABLE[-1]]


def test_role_picks_the_configuration(tmp_path: Path) -> None:
    baseline = {"env": {"AT_ROLE": "baseline"}, "params": {}, "cpus": None}
    path = write_best(tmp_path, {"AT_ROLE": "best"}, baseline=baseline)
    probe = "import os; print(os.environ['AT_ROLE'])"

    status, out, err, _ = run_exec(
        ["--config", str(path), "--role", "baseline", "--", sys.executable, "-c", probe]
    )

    assert status == 0, err
    assert out == "baseline\n"


def not_json(folder: Path) -> Path:
    path = folder / "best.json"
    path.write_text("{not json")
    return path


def wrong_kind(folder: Path) -> Path:
    path = folder / "best.json"
    path.write_text(json.dumps({"kind": "other", "schema": SCHEMA_VERSION}))
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder / "missing.json", "file not found"),
        (not_json, "not valid JSON"),
        (wrong_kind, "not an autotune best.json"),
        (
            lambda folder: write_best(folder, {"A B": "1"}),
            "best.env: 'A B' is not a valid variable",
        ),
        (lambda folder: write_best(folder, {}, cpus="0"), "best.cpus: '0' is not a non-empty list"),
        (
            lambda folder: write_best(folder, {}, cpus=[max(USABLE) + 1]),
            f"best.cpus: CPU(s) {max(USABLE) + 1} are not usable here",
        ),
        (
            lambda folder: write_best(folder, {"LD_PRELOAD": "/no/such/libjemalloc.so.2"}),
            "best.env.LD_PRELOAD: /no/such/libjemalloc.so.2 does not exist on this host",
        ),
    ],
)
def test_a_bad_config_is_exit_2_in_one_line(tmp_path: Path, make: Any, message: str) -> None:
    path = make(tmp_path)

    status, out, err, _ = run_exec(["--config", str(path), "--", "true"])

    assert status == 2
    assert out == ""
    assert err.startswith("autotune: error: ") and len(err.splitlines()) == 1, err
    assert message in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["true"], "put the command after --"),
        ([], "put the command after --"),
        (["--"], "no command after --"),
    ],
)
def test_the_command_must_follow_a_double_dash(
    tmp_path: Path, args: list[str], message: str
) -> None:
    path = write_best(tmp_path, {})

    status, _, err, _ = run_exec(["--config", str(path), *args])

    assert status == 2
    assert err.startswith(f"autotune: error: {message}")
    assert len(err.splitlines()) == 1


def test_child_env_sets_removes_and_adds_the_params() -> None:
    env = child_env({"KEEP": "1", "DROP": "2", "SET": "old"}, record({"DROP": None, "SET": "new"}))

    assert env == {"KEEP": "1", "SET": "new", "AUTOTUNE_PARAMS": json.dumps(PARAMS, sort_keys=True)}


def test_check_host_compares_with_the_usable_cpus() -> None:
    check_host(record({}, cpus=(0, 1)), "x", usable={0, 1, 2})

    with pytest.raises(
        UserError, match=r"x\.cpus: CPU\(s\) 2-3 are not usable here \(this process may use 0-1\)"
    ):
        check_host(record({}, cpus=(1, 2, 3)), "x", usable={0, 1})
