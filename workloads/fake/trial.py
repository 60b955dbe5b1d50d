"""One trial of the fake workload: a sleep whose length depends on the knobs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

from autotune.outputs import encode_outputs, encode_scalars, weights_info
from autotune.protocol import TrialResult, encode_message
from workloads.harness import BadInput, Reporter, build_result, observed_environment

FAULTS = (
    "none", "crash", "segfault", "hang", "garbage", "no_result", "half_result", "memory", "spawn",
    "bad_input", "exit", "oom_kill",
)
# Multiplies every step time; lets tests inject a regression into an already stored configuration.
SLOWDOWN_ENV = "AUTOTUNE_FAKE_SLOWDOWN"
# The ``answer`` knob: how the fake's check outputs differ from the exact ones, and how much faster it is.
ANSWERS = {"exact": (0.0, 1.0), "rounded": (1e-3, 0.8), "wrong": (None, 0.5)}
WEIGHTS = weights_info("trained", "fake0001", "the fake workload's fixed weights")


def step_cost(params: dict[str, Any], env: dict[str, str], n_cpus: int) -> float:
    """Relative cost of one step: channels_first, oneDNN off and thread mismatch are slower."""
    cost = 1.0
    if params.get("data_format") == "channels_first" and not params.get("transpose_elimination"):
        cost *= 4.0
    if env.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        cost *= 2.0
    threads = int(params.get("intra_threads", 0)) or n_cpus
    cost *= 1.0 + 0.25 * abs(threads - n_cpus)
    batch = int(params.get("batch", 1))
    patch = int(params.get("patch", 16))
    cost *= batch * (patch / 16) ** 3
    cost *= float(params.get("slowdown", 1.0)) * float(env.get(SLOWDOWN_ENV, "1"))
    cost *= ANSWERS.get(str(params.get("answer", "exact")), (0.0, 1.0))[1]
    return cost


def prepare(params: dict[str, Any]) -> dict[str, Any]:
    """What the fake's output checks need: nothing to train; says which weights it uses."""
    check(params)
    return {"weights": WEIGHTS, "trained": False, "seconds": 0.0}


def check_outputs(params: dict[str, Any]) -> dict[str, Any]:
    """The fake's outputs for its fixed check inputs: exact, rounded (small noise) or wrong (labels flipped)."""
    import numpy as np

    batch, patch = int(params.get("batch", 1)), int(params.get("patch", 16))
    answer = str(params.get("answer", "exact"))
    if params.get("mode") == "train":
        loss = 0.5 + 0.01 * batch
        if answer == "wrong":
            loss *= 2
        elif answer == "rounded":
            loss *= 1 + 1e-4
        return encode_scalars({"loss": loss, "grad_norm": 2.0}, weights=WEIGHTS, inputs_digest=f"fake-{batch}")
    grid = np.linspace(-3.0, 3.0, patch, dtype=np.float64)
    field = grid[:, None, None] + grid[None, :, None] * 0.5 - grid[None, None, :] * 0.25
    outputs = 1.0 / (1.0 + np.exp(-np.stack([field + b for b in range(batch)])[..., None]))
    noise, _ = ANSWERS.get(answer, (0.0, 1.0))
    if noise is None:
        outputs = 1.0 - outputs
    elif noise:
        outputs = outputs + noise * np.random.default_rng(7).standard_normal(outputs.shape)
    return encode_outputs(outputs, weights=WEIGHTS, labels="threshold", inputs_digest=f"fake-{batch}-{patch}")


def check(params: dict[str, Any]) -> dict[str, Any]:
    """What the fake workload can tell of its input before a trial: the ``fault`` knob's value.

    Raises:
        BadInput: An unknown fault, or the ``bad_input`` fault.
    """
    fault = params.get("fault", "none")
    if fault not in FAULTS:
        raise BadInput(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
    if fault == "bad_input":
        raise BadInput("the fake workload was told its input is bad")
    return {}


def run(params: dict[str, Any], reporter: Reporter) -> TrialResult:
    """Run one fake trial, possibly failing as the ``fault`` knob says."""
    check(params)
    fault = params.get("fault", "none")
    only = params.get("fault_instance")  # one of several instances fails, the others run
    if only is not None and os.environ.get("AUTOTUNE_INSTANCE") != str(only):
        fault = "none"
    cpus = len(os.sched_getaffinity(0))
    base = float(params.get("step_seconds", 0.01)) * step_cost(params, dict(os.environ), cpus)
    noise = float(params.get("noise", 0.0))
    rng = random.Random()
    fault_at = int(params.get("fault_after", 1))
    hog: list[bytearray] = []

    slow_instance = params.get("warmup_extra_instance")
    late = slow_instance is not None and os.environ.get("AUTOTUNE_INSTANCE") == str(slow_instance)

    def step(index: int) -> None:
        if index == fault_at:
            _fail(fault, params, hog)
        if late and index == 0:  # this instance's warm-up takes a second longer
            time.sleep(1.0)
        time.sleep(max(0.0, base * (1.0 + rng.gauss(0.0, noise))))

    batch = int(params.get("batch", 1))
    patch = int(params.get("patch", 16))
    warmup_times, step_times = reporter.time_steps(
        step, int(params.get("warmup", 1)), int(params.get("steps", 3)),
        work_per_step=batch * patch**3, trial_seconds=float(params.get("trial_seconds", 0.0)),
    )
    if fault == "no_result":
        raise SystemExit(0)
    if fault == "half_result":
        sys.stdout.write(encode_message("result", workload="fake")[:40])
        sys.stdout.flush()
        raise SystemExit(0)
    outputs = check_outputs(params) if reporter.outputs_wanted else None
    return build_result(
        "fake",
        params,
        warmup_times,
        step_times,
        work_per_step=batch * patch**3,
        rate_name="voxels_per_s",
        samples_per_step=batch,
        flops_per_step=1e9 * batch * (patch / 16) ** 3,
        setup_seconds=reporter.setup_seconds,
        effective={**observed_environment(), "layout": params.get("data_format", "channels_last")},
        outputs=outputs,
    )


def _fail(fault: str, params: dict[str, Any], hog: list[bytearray]) -> None:
    if fault == "crash":
        raise RuntimeError("the fake workload crashed as told")
    if fault == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "oom_kill":  # what the kernel's out-of-memory killer does to the largest process
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "exit":
        raise SystemExit(3)
    if fault == "garbage":
        print("@autotune {this is not json", flush=True)
    if fault == "memory":
        chunk = 16 * 1024 * 1024
        for _ in range(int(params.get("fault_mb", 2048)) // 16):
            hog.append(bytearray(b"\1" * chunk))
            time.sleep(0.005)
        time.sleep(3600)
    if fault == "spawn":
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        time.sleep(3600)
    if fault == "hang":
        time.sleep(3600)
