from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workloads.harness import BadInput
from workloads.unet3d.data import generate_synthetic_brats
from workloads.unet3d.trial import layout_of, settings_from

TINY = ["patch=16", "base_filters=4", "depth=3", "image_size=32", "steps=3", "warmup=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def bench(sets: list[str], cache: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    command = [sys.executable, "-m", "autotune", "bench", "--json", *extra]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "AUTOTUNE_CACHE": str(cache)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    lines = done.stdout.strip().splitlines()
    return done, json.loads(lines[-1]) if lines else None


@pytest.mark.tf
@pytest.mark.parametrize(
    ("sets", "layout"),
    [
        (["data_format=channels_last", "mode=train", "onednn=true"], "channels_last"),
        (["data_format=channels_first", "mode=infer", "onednn=false", "batch=2"], "cf_keras"),
    ],
)
def test_real_bench_reports_honest_figures(cache, sets, layout):
    done, record = bench([*TINY, *sets], cache)
    assert done.returncode == 0, done.stderr
    assert record["outcome"] == "ok"
    assert record["effective"]["layout"] == layout
    assert len(record["step_seconds"]) == 3 and len(record["warmup_seconds"]) == 1
    steps = sorted(record["step_seconds"])
    assert record["median_step_s"] == pytest.approx(steps[1])
    batch = record["config"]["batch"]
    assert record["work_per_step"] == batch * 16**3
    assert record["voxels_per_s"] == pytest.approx(record["work_per_step"] / record["median_step_s"])
    assert record["latency_per_sample_s"] == pytest.approx(record["median_step_s"] / batch)
    assert record["gflops_per_s"] == pytest.approx(record["flops_per_step"] / record["median_step_s"] / 1e9)
    assert record["peak_rss_mb"] > 100
    expected_onednn = "onednn=true" in sets
    assert record["effective"]["onednn_enabled"] is expected_onednn
    assert record["effective"]["env"]["TF_ENABLE_ONEDNN_OPTS"] == ("1" if expected_onednn else "0")
    assert record["effective"]["tensorflow"].startswith("2.")


@pytest.mark.tf
def test_threads_and_affinity_are_observed(cache):
    tiny = [item for item in TINY if not item.startswith("steps=")]
    done, record = bench([*tiny, "intra_threads=1", "inter_threads=1", "affinity=cores", "pin_cores=1",
                          "steps=1", "data_format=channels_last"], cache)
    assert done.returncode == 0, done.stderr
    assert record["effective"]["intra_op_threads"] == 1
    assert record["effective"]["inter_op_threads"] == 1
    assert record["effective"]["cpu_affinity"] == record["cpus"] == [0]


def test_bad_patch_is_bad_input(cache):
    done, record = bench(["patch=18", "depth=3", "image_size=32"], cache)
    assert done.returncode == 2
    assert record["outcome"] == "bad_input"
    assert "multiple of 4" in record["reason"]
    assert "Traceback" not in done.stderr


def test_corrupt_data_dir_names_the_file(cache, tmp_path):
    [case] = generate_synthetic_brats(tmp_path / "brats", n_cases=1, shape=(48, 48, 32))
    flair = next(case.glob("*_flair.nii.gz"))
    flair.write_bytes(flair.read_bytes()[:200])
    done, record = bench(TINY, cache, "--data-dir", str(tmp_path / "brats"))
    assert done.returncode == 2
    assert flair.name in record["reason"]
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("knobs", "layout"),
    [
        (("channels_last", False, False), "channels_last"),
        (("channels_last", True, True), "channels_last"),
        (("channels_first", False, False), "cf_keras"),
        (("channels_first", False, True), "cf_per_layer"),
        (("channels_first", True, False), "cf_eliminated"),
        (("channels_first", True, True), "cf_eliminated"),
    ],
)
def test_layout_knobs_map_to_strategies(knobs, layout):
    assert layout_of(*knobs) == layout


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"patch": "16,16"}, "D or D,H,W"),
        ({"patch": "x"}, "not a number"),
        ({"patch": "256"}, "larger than image_size"),
        ({"mode": "serve"}, "mode"),
        ({"precision": "float16"}, "precision"),
        ({"batch": 0}, "at least 1"),
        ({"colour": "red"}, "unknown unet3d knob"),
        ({"data_format": "nchw"}, "data_format"),
        ({"instance_norm": "batch"}, "instance_norm"),
    ],
)
def test_bad_settings(params, message):
    with pytest.raises(BadInput, match=message):
        settings_from(params)


def test_settings_defaults_are_the_reference():
    s = settings_from({})
    assert s.patch == (128, 128, 128) and s.batch == 1 and s.layout == "cf_keras"
    assert settings_from({"patch": "64,64,32", "depth": 5}).patch == (64, 64, 32)


@pytest.mark.tf
def test_the_packaged_mimalloc_runs_under_tensorflow(cache):
    done, record = bench([*TINY, "allocator=mimalloc", "data_format=channels_last"], cache)
    assert done.returncode == 0, done.stderr
    assert record["outcome"] == "ok"
    assert "mimalloc" in record["effective"]["loaded_runtimes"]["allocator"]

