"""The host's GEMM peaks (float32, bfloat16), measured once per host fingerprint, kept in the cache folder.

The measurement runs ``python -m workloads.gemm`` in a subprocess (the driver never imports
TensorFlow). Trials' achieved GFLOP/s are shown as a fraction of the peak of their precision.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from autotune.errors import UserError
from autotune.host import HostInfo
from autotune.protocol import SCHEMA_VERSION, ProtocolError, decode_line

CALIBRATION_TIMEOUT_S = 600


@dataclass(frozen=True)
class Calibration:
    """A measured GEMM peak.

    Attributes:
        host_fingerprint: The host it was measured on.
        size: Side of the square matrices.
        peak_gflops_per_s: float32 rate of the fastest repeat.
        median_gflops_per_s: float32 rate of the median repeat.
        measured_at: ISO time of the measurement.
        schema: File schema version.
        bfloat16_peak_gflops_per_s: bfloat16 rate of the fastest repeat (AMX or AVX512_BF16 through
            oneDNN), or None where bfloat16 matmuls do not run.
    """

    host_fingerprint: str
    size: int
    peak_gflops_per_s: float
    median_gflops_per_s: float
    measured_at: str
    schema: int = SCHEMA_VERSION
    bfloat16_peak_gflops_per_s: float | None = None

    def peak_for(self, precision: str) -> float:
        """The peak a configuration of ``precision`` is measured against."""
        if precision == "mixed_bfloat16" and self.bfloat16_peak_gflops_per_s:
            return self.bfloat16_peak_gflops_per_s
        return self.peak_gflops_per_s


def cache_dir() -> Path:
    """``$AUTOTUNE_CACHE`` or ``~/.cache/autotune``."""
    return Path(os.environ.get("AUTOTUNE_CACHE") or Path.home() / ".cache" / "autotune")


def calibration_path(host: HostInfo) -> Path:
    """Where the calibration of ``host`` is kept."""
    return cache_dir() / f"gemm-peak-{host.fingerprint}.json"


def load_calibration(host: HostInfo) -> Calibration | None:
    """The stored calibration of ``host``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(calibration_path(host).read_text())
        calibration = Calibration(**data)
    except (OSError, ValueError, TypeError):
        return None
    if calibration.schema != SCHEMA_VERSION or calibration.host_fingerprint != host.fingerprint:
        return None
    return calibration


def calibrate(host: HostInfo, *, size: int = 4096, repeats: int = 10, python: str = sys.executable) -> Calibration:
    """Measure the GEMM peak in a subprocess and store it.

    Raises:
        UserError: The measurement failed.
    """
    command = [python, "-m", "workloads.gemm", "--size", str(size), "--repeats", str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CALIBRATION_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"GEMM calibration failed: {exc}") from None
    result = None
    for line in done.stdout.splitlines():
        try:
            message = decode_line(line)
        except ProtocolError:
            continue
        if message and message["kind"] == "result":
            result = message
    if done.returncode != 0 or result is None:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"GEMM calibration failed (exit {done.returncode}): {last}")
    calibration = Calibration(
        host_fingerprint=host.fingerprint,
        size=size,
        peak_gflops_per_s=float(result["peak_gflops_per_s"]),
        median_gflops_per_s=float(result["median_gflops_per_s"]),
        bfloat16_peak_gflops_per_s=(
            float(result["bfloat16_peak_gflops_per_s"]) if result.get("bfloat16_peak_gflops_per_s") else None
        ),
        measured_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    path = calibration_path(host)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(calibration), indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"cannot store the calibration in {path}: {exc.strerror or exc}") from None
    return calibration
