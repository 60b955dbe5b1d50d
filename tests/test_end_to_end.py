"""The main job, for real: ``autotune run`` on the real U-Net at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest

TINY = ["patch=16", "base_filters=4", "depth=3", "image_size=32", "steps=2", "warmup=1", "trial_seconds=0"]
# The output checks' weights, trained by a tiny recipe (the product's takes minutes; it changes the hash).
TINY_RECIPE = {"steps": 4, "patch": 16, "batch": 1, "image_size": 32}


def seed_calibration(cache) -> None:
    """Calibrate this host's GEMM peaks at a small size into ``cache``, so the run does not spend a minute
    at the full size (what a first `autotune run` on a host does)."""
    from autotune.calibrate import calibrate
    from autotune.host import probe_host

    saved = os.environ.get("AUTOTUNE_CACHE")
    os.environ["AUTOTUNE_CACHE"] = str(cache)
    try:
        calibrate(probe_host(software=False), size=512, repeats=2)
    finally:
        if saved is None:
            os.environ.pop("AUTOTUNE_CACHE")
        else:
            os.environ["AUTOTUNE_CACHE"] = saved


@pytest.mark.tf
def test_real_run_writes_best_json_and_report(tmp_path):
    command = [sys.executable, "-m", "autotune", "run", "--workload", "unet3d", "--trials", "2",
               "--confirm-top", "1", "--confirm-repeats", "1", "--study", "tiny",
               "--storage", f"sqlite:///{tmp_path / 'a.db'}", "--report-dir", str(tmp_path / "report")]
    for item in TINY:
        command += ["--set", item]
    env = {**os.environ, "AUTOTUNE_CACHE": str(tmp_path / "cache"),
           "AUTOTUNE_UNET3D_WEIGHTS_RECIPE": json.dumps(TINY_RECIPE)}
    seed_calibration(tmp_path / "cache")
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    best = json.loads((tmp_path / "report" / "best.json").read_text())
    assert best["kind"] == "autotune-best" and best["workload"] == "unet3d"
    assert best["baseline"]["config"]["data_format"] == "channels_first"
    assert best["baseline"]["env"]["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert best["best"]["voxels_per_s"] > 0 and best["speedup"]["vs_baseline"]["value"] > 0
    assert best["confirmation"]["rounds"] == 1
    assert best["gemm_peak_gflops_per_s"] > 0
    for name in ("report.md", "report.html", "profile-baseline.json", "profile-best.json"):
        assert (tmp_path / "report" / name).exists(), name
    assert "Op-time breakdown" in (tmp_path / "report" / "report.md").read_text()
    # the output-agreement guard ran on the real network: the reference at the baseline's shape, and the
    # float32 baseline (channels_first, oneDNN off) agrees with it to rounding
    assert best["agreement"]["weights"]["kind"] == "trained"
    assert best["baseline"]["agreement"]["ok"] is True
    assert best["baseline"]["agreement"]["figures"]["rel_l2_error"] < 1e-3
    assert "## Output agreement" in (tmp_path / "report" / "report.md").read_text()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'a.db'}")
    roles = [t.user_attrs.get("role") for t in study.trials]
    assert roles == ["baseline", "vendor_recommended"]
    assert "baseline" in done.stdout and "best" in done.stdout
