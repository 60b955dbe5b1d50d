"""A plain (non-editable) install works: the wheel carries the search spaces and runs a real bench.

The wheel is built from a copy of the checkout and installed with ``--no-deps --target`` into a
temporary folder, so nothing is downloaded again: the test environment's packages serve as the
dependencies. The bench then runs from another directory, where only the wheel can supply autotune,
its workloads and ``search_spaces/unet3d.toml``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = ["patch=16", "base_filters=4", "depth=3", "image_size=32", "steps=3", "warmup=1",
        "data_format=channels_last"]
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".ruff_cache", "reports", "*.db")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the checkout and unpacked into a target folder."""
    root = tmp_path_factory.mktemp("wheel")
    source, wheels, target = root / "src", root / "wheels", root / "site"
    shutil.copytree(REPO, source, ignore=SKIP)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels),
                            str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("autotune-*.whl")
    done = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def from_wheel(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(target), "AUTOTUNE_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_the_wheel_ships_the_search_spaces(installed: Path) -> None:
    assert (installed / "search_spaces" / "unet3d.toml").is_file()
    assert (installed / "workloads" / "unet3d" / "__main__.py").is_file()


@pytest.mark.tf
def test_a_bench_runs_from_the_wheel_in_another_directory(installed: Path, tmp_path: Path) -> None:
    where = from_wheel(installed, tmp_path, "-c", "import autotune, search_spaces, workloads;"
                       "print(autotune.__file__, search_spaces.__file__, workloads.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(installed)) for path in where.stdout.split()), where.stdout

    command = ["-m", "autotune", "bench", "--workload", "unet3d", "--json"]
    for item in TINY:
        command += ["--set", item]
    done = from_wheel(installed, tmp_path, *command)

    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["outcome"] == "ok"
    assert record["workload"] == "unet3d"
    assert len(record["step_seconds"]) == 3
