"""``autotune exec`` and ``export`` with a configuration of several instances (a tiny Python command)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autotune.export import load_record, render
from autotune.protocol import SCHEMA_VERSION
from autotune.summary import BEST_KIND

USABLE = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(USABLE) < 2, reason="needs two usable CPUs")
LAYOUT = {"instances": 2, "cores_per_instance": 1, "hyperthreads": False,
          "cpus": [[USABLE[0]], [USABLE[1]]], "membind": [[], []]}
# One write per line: two copies share the pipe, and print() may write the line and its newline apart.
PROBE = ("import json, os; os.write(1, (json.dumps({'index': os.environ['AUTOTUNE_INSTANCE'], "
         "'count': os.environ['AUTOTUNE_INSTANCES'], 'cpus': sorted(os.sched_getaffinity(0))}) + '\\n').encode())")


def write_best(folder: Path, layout: Any = LAYOUT) -> Path:
    best = {"trial": 3, "role": "search", "config": {"instances": 2}, "env": {"OMP_NUM_THREADS": "1"},
            "params": {"batch": 1}, "cpus": None, "instances": layout}
    document = {"schema": SCHEMA_VERSION, "kind": BEST_KIND, "study": "s", "workload": "unet3d",
                "host_fingerprint": "f", "host": {}, "best": best, "baseline": None, "vendor_recommended": None}
    path = folder / "best.json"
    path.write_text(json.dumps(document))
    return path


def autotune(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "autotune", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_exec_starts_one_pinned_copy_per_instance(tmp_path: Path) -> None:
    proc = autotune("exec", "--config", str(write_best(tmp_path)), "--", sys.executable, "-c", PROBE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    seen = sorted((json.loads(line) for line in out.splitlines()), key=lambda d: d["index"])
    assert seen == [{"index": "0", "count": "2", "cpus": [USABLE[0]]},
                    {"index": "1", "count": "2", "cpus": [USABLE[1]]}]


def test_exec_exits_with_the_first_non_zero_status(tmp_path: Path) -> None:
    code = "import os, sys, time; i = int(os.environ['AUTOTUNE_INSTANCE']); time.sleep(0.3 * i); sys.exit(3 + i)"
    proc = autotune("exec", "--config", str(write_best(tmp_path)), "--", sys.executable, "-c", code)
    proc.communicate(timeout=60)
    assert proc.returncode == 3  # instance 0 ended first, with 3; instance 1's 4 came later


def test_exec_forwards_a_signal_to_every_copy(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = ("import os, pathlib, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(20 + int(os.environ['AUTOTUNE_INSTANCE'])))\n"
            f"pathlib.Path({str(ready)!r} + os.environ['AUTOTUNE_INSTANCE']).touch()\n"
            "time.sleep(60)\n")
    proc = autotune("exec", "--config", str(write_best(tmp_path)), "--", sys.executable, "-c", code)
    deadline = time.monotonic() + 30
    while not all(Path(f"{ready}{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode in (20, 21)  # both got it; whichever ended first gives the status


def test_exec_of_a_missing_command_is_127(tmp_path: Path) -> None:
    proc = autotune("exec", "--config", str(write_best(tmp_path)), "--", "no-such-command-autotune")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 127
    assert "no-such-command-autotune" in err.strip().splitlines()[-1]


def test_exec_refuses_cpus_that_are_not_usable(tmp_path: Path) -> None:
    layout = {**LAYOUT, "cpus": [[USABLE[0]], [4095]]}
    proc = autotune("exec", "--config", str(write_best(tmp_path, layout)), "--", "true")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1 and "4095" in err and "not usable here" in err


def test_sh_export_launches_every_instance(tmp_path: Path) -> None:
    text = render(load_record(write_best(tmp_path)), "sh")
    (tmp_path / "tuned.sh").write_text(text)
    script = (f". {tmp_path / 'tuned.sh'}; autotune_launch {sys.executable} -c \"$0\"; echo status=$?")
    done = subprocess.run(["sh", "-c", script, PROBE], capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert lines[-1] == "status=0"
    seen = sorted((json.loads(line) for line in lines[:-1]), key=lambda d: d["index"])
    assert [d["cpus"] for d in seen] == [[USABLE[0]], [USABLE[1]]]
    failing = f". {tmp_path / 'tuned.sh'}; autotune_launch sh -c 'exit $((5 + AUTOTUNE_INSTANCE))'; echo status=$?"
    assert subprocess.run(["sh", "-c", failing], capture_output=True, text=True).stdout.strip() == "status=5"


def test_every_format_carries_the_layout(tmp_path: Path) -> None:
    record = load_record(write_best(tmp_path))
    exported = json.loads(render(record, "json"))
    assert exported["instances"]["cpus"] == LAYOUT["cpus"]
    (tmp_path / "export.json").write_text(render(record, "json"))
    assert load_record(tmp_path / "export.json").layout == record.layout
    dotenv = render(record, "dotenv")
    assert 'AUTOTUNE_INSTANCES="2"' in dotenv
    assert f'AUTOTUNE_INSTANCE_CPUS="{USABLE[0]};{USABLE[1]}"' in dotenv
    for fmt in ("docker", "k8s"):
        text = render(record, fmt)
        assert "# Instances: 2 copies of the command" in text
        assert f"AUTOTUNE_INSTANCE=1 AUTOTUNE_INSTANCES=2 taskset -c {USABLE[1]} CMD" in text


def test_a_malformed_layout_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = autotune("export", "--best-json", str(write_best(tmp_path, {"cpus": "0-1"})), "--format", "sh")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == ["autotune: error: " + err.strip().split("autotune: error: ")[1]]
    assert "best.instances" in err
