from __future__ import annotations

import json
import sys

import pytest

from autotune.calibrate import Calibration, calibrate, calibration_path, load_calibration
from autotune.errors import UserError
from autotune.protocol import encode_message


def fake_python(tmp_path, line: str, status: int = 0):
    script = tmp_path / "python"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint({line!r})\nsys.exit({status})\n")
    script.chmod(0o755)
    return str(script)


def test_calibration_is_measured_stored_and_read_back(tmp_path, host, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    line = encode_message("result", size=64, seconds=[0.1], median_gflops_per_s=250.0, peak_gflops_per_s=300.0,
                          bfloat16_peak_gflops_per_s=900.0, tensorflow="x")
    measured = calibrate(host, size=64, python=fake_python(tmp_path, line))
    assert (measured.peak_gflops_per_s, measured.bfloat16_peak_gflops_per_s) == (300.0, 900.0)
    assert json.loads(calibration_path(host).read_text())["host_fingerprint"] == host.fingerprint
    assert load_calibration(host) == measured
    assert measured.peak_for("mixed_bfloat16") == 900.0 and measured.peak_for("float32") == 300.0


def test_a_host_without_bfloat16_matmuls_uses_the_float32_peak():
    calibration = Calibration("f", 64, 300.0, 250.0, "now")
    assert calibration.peak_for("mixed_bfloat16") == 300.0


@pytest.mark.parametrize(("line", "status"), [("no protocol line", 0), ("@autotune {broken", 0), ("", 3)])
def test_failed_calibration_is_a_user_error(tmp_path, host, monkeypatch, line, status):
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="GEMM calibration failed"):
        calibrate(host, python=fake_python(tmp_path, line, status))
    assert load_calibration(host) is None


def test_unreadable_or_foreign_calibration_files_are_ignored(tmp_path, host, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    path = calibration_path(host)
    path.write_text("{not json")
    assert load_calibration(host) is None
    path.write_text(json.dumps({"host_fingerprint": "other", "size": 1, "peak_gflops_per_s": 1.0,
                                "median_gflops_per_s": 1.0, "measured_at": "x", "schema": 1}))
    assert load_calibration(host) is None
