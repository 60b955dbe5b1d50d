"""The child side of the trial protocol, shared by every workload.

A workload module provides ``run(params, reporter) -> dict`` that prepares its data and model, then calls
:meth:`Reporter.time_steps` with its step function, and returns the workload-specific figures
(voxels per step, FLOPs per step, effective settings). :func:`main` wraps it into the process entry point:
it reads the JSON config, reports every step and the final result on stdout, and turns bad input into an
``error`` message with exit status 2, and unusable output into a ``bad_output`` message with exit status 3.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autotune.measure import summarize
from autotune.protocol import BARRIER_VARIABLE, ProtocolError, TrialConfig, TrialResult, encode_message

EXIT_BAD_INPUT = 2
EXIT_BAD_OUTPUT = 3
# Fewest timed steps a calibrated trial runs: a median of fewer says nothing about spread.
MIN_CALIBRATED_STEPS = 3
PROCESS_START = time.perf_counter()


class BadInput(Exception):
    """A trial config or data the workload cannot run; the message is one line."""


class BadOutput(Exception):
    """What a trial measured cannot be used (a quality figure missing); the message is one line."""


class Reporter:
    """Emits protocol messages for one trial and times its steps.

    ``timed_steps``, the driver's order from the trial config, fixes the number of timed steps of
    :meth:`time_steps` whatever the workload's own knobs say. ``outputs_wanted``, also the driver's
    order, asks the workload to compute its check outputs after the timed steps (:mod:`autotune.outputs`)
    and pass them to :func:`build_result`.
    """

    def __init__(self, stream=None, timed_steps: int | None = None, outputs_wanted: bool = False) -> None:
        self._stream = stream or sys.stdout
        self.setup_seconds = 0.0
        self.timed_steps = timed_steps
        self.outputs_wanted = outputs_wanted

    def emit(self, kind: str, **payload: Any) -> None:
        """Write one protocol message and flush it, so the driver sees it at once."""
        self._stream.write(encode_message(kind, **payload) + "\n")
        self._stream.flush()

    def time_steps(
        self,
        step: Callable[[int], float | None],
        warmup: int,
        steps: int,
        *,
        work_per_step: float,
        trial_seconds: float = 0.0,
        before_timed: Callable[[], None] | None = None,
    ) -> tuple[list[float], list[float]]:
        """Run ``warmup`` untimed then the timed calls of ``step``, reporting each.

        With ``trial_seconds`` > 0 the number of timed steps is calibrated as benchmark harnesses
        calibrate their rounds: enough steps to fill about ``trial_seconds`` at the speed of the last
        warm-up step (or the first timed one), at least :data:`MIN_CALIBRATED_STEPS`, at most ``steps``.

        Args:
            step: Runs one complete step (including waiting for its result) given its index; it may
                return the step's own figure of the objective (a program that prints its figure), which
                the step message carries as ``figure``.
            warmup: Number of warm-up steps, not counted in the figure.
            steps: Number of timed steps (the maximum when calibrating).
            work_per_step: Work per step in the objective's unit (voxels, samples), sent ahead so the
                driver can judge a running figure.
            trial_seconds: Target duration of the timed steps; 0 runs exactly ``steps``.
            before_timed: Called once after the warm-up, before the first timed step's clock
                starts (a profiler starts there).

        Returns:
            Warm-up times and timed step times, in seconds.
        """
        if self.timed_steps is not None:  # the driver's order (TrialConfig.timed_steps) overrides the knobs
            steps, trial_seconds = self.timed_steps, 0.0
        self.setup_seconds = time.perf_counter() - PROCESS_START
        self.emit("setup", seconds=self.setup_seconds, work_per_step=work_per_step, warmup=warmup, steps=steps)
        warmups = [self._timed(step, index, index, True)[0] for index in range(warmup)]
        if before_timed is not None:
            before_timed()
        self._barrier()
        timed: list[float] = []
        planned = steps
        if trial_seconds > 0 and warmups:
            planned = self._plan(warmups[-1], steps, trial_seconds)
        elif trial_seconds <= 0:
            self.emit("plan", steps=planned)
        while len(timed) < planned:
            began = time.time()
            elapsed, figure = self._timed(step, warmup + len(timed), len(timed), False, emit=False)
            window = {"start": began, "end": time.time()}
            if trial_seconds > 0 and not warmups and not timed:
                planned = self._plan(elapsed, steps, trial_seconds)
            # The plan goes out before the step that may get the trial pruned, so the driver knows it.
            self._emit_step(len(timed), elapsed, False, figure, **window)
            timed.append(elapsed)
        return warmups, timed

    def _barrier(self) -> None:
        """One of several instances: say ready, then wait for the driver's go, so all start timing together."""
        fd = os.environ.get(BARRIER_VARIABLE)
        if not fd:
            return
        self.emit("ready")
        try:
            os.read(int(fd), 1)
            os.close(int(fd))
        except (OSError, ValueError):
            pass  # no barrier after all (a program started by hand with the variable set): time at once

    def _plan(self, estimate: float, steps: int, trial_seconds: float) -> int:
        wanted = math.ceil(trial_seconds / max(estimate, 1e-9))
        planned = max(min(MIN_CALIBRATED_STEPS, steps), min(steps, wanted))
        self.emit("plan", steps=planned)
        return planned

    def _timed(
        self, step: Callable[[int], float | None], index: int, reported: int, warmup: bool, *, emit: bool = True
    ) -> tuple[float, float | None]:
        start = time.perf_counter()
        figure = step(index)
        elapsed = time.perf_counter() - start
        if emit:
            self._emit_step(reported, elapsed, warmup, figure)
        return elapsed, figure

    def _emit_step(self, reported: int, elapsed: float, warmup: bool, figure: float | None, **window: float) -> None:
        extra = {} if figure is None else {"figure": float(figure)}
        self.emit("step", index=reported, seconds=elapsed, warmup=warmup, **extra, **window)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_result(
    workload: str,
    params: dict[str, Any],
    warmup_seconds: list[float],
    step_seconds: list[float],
    *,
    work_per_step: float,
    rate_name: str,
    samples_per_step: float,
    flops_per_step: float | None = None,
    setup_seconds: float,
    effective: dict[str, Any],
    extra: dict[str, float] | None = None,
    outputs: dict[str, Any] | None = None,
) -> TrialResult:
    """Compute the figures of a trial from its step times.

    Args:
        workload: Workload name.
        params: The knobs the trial ran with.
        warmup_seconds: Untimed warm-up step times.
        step_seconds: Timed step times.
        work_per_step: Work per step in the unit of ``rate_name`` (voxels, samples).
        rate_name: Name of the throughput figure ``work_per_step / median``, e.g. ``samples_per_s``.
        samples_per_step: Samples per step (the batch), for ``samples_per_s`` and ``latency_per_sample_s``.
        flops_per_step: Model floating-point operations per step, when known (adds ``gflops_per_s``).
        setup_seconds: Time to the first warm-up step.
        effective: What the process observed.
        extra: Further figures of the workload's own.
        outputs: The check outputs (:mod:`autotune.outputs` payload), when the driver asked for them.
    """
    summary = summarize(step_seconds)
    median = summary.median
    figures = {
        rate_name: work_per_step / median,
        "samples_per_s": samples_per_step / median,
        "latency_per_sample_s": median / samples_per_step,
    }
    if flops_per_step:
        figures.update(flops_per_step=flops_per_step, gflops_per_s=flops_per_step / median / 1e9)
    figures.update(extra or {})
    return TrialResult(
        workload=workload,
        params=params,
        warmup_seconds=warmup_seconds,
        step_seconds=step_seconds,
        median_step_s=median,
        mad_step_s=summary.mad,
        cv=summary.cv,
        work_per_step=work_per_step,
        figures=figures,
        peak_rss_mb=peak_rss_mb(),
        setup_seconds=setup_seconds,
        effective=effective,
        outputs=outputs or {},
    )


def observed_environment() -> dict[str, Any]:
    """What this process sees of the environment knobs, CPU affinity and OpenMP runtime."""
    names = (
        "TF_ENABLE_ONEDNN_OPTS",
        "OMP_NUM_THREADS",
        "KMP_AFFINITY",
        "KMP_BLOCKTIME",
        "LD_PRELOAD",
        "TF_XLA_FLAGS",
    )
    return {
        "env": {name: os.environ.get(name) for name in names},
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "loaded_runtimes": loaded_runtimes(),
    }


def loaded_runtimes() -> dict[str, str | None]:
    """Paths of the OpenMP runtime and allocator libraries mapped into this process, if any."""
    wanted = {"openmp": ("libiomp5", "libgomp", "libomp"), "allocator": ("jemalloc", "tcmalloc", "mimalloc")}
    found: dict[str, str | None] = dict.fromkeys(wanted)
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return found
    for line in maps:
        path = line.rsplit(" ", 1)[-1]
        for key, stems in wanted.items():
            if found[key] is None and any(stem in path for stem in stems):
                found[key] = path
    return found


def main(
    workload: str | None,
    run: Callable[[dict[str, Any], Reporter], TrialResult],
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> int:
    """Process entry point of a workload: ``python -m workloads.<name> --config FILE [--check|--prepare]``.

    Args:
        workload: The workload's name, checked against the config; None accepts any name (the command
            wrapper runs under the name of the user's own search space).
        run: Runs the trial and returns its result record.
        check: With ``--check``, validates the config's values and the inputs without measuring and
            returns what it found (sent as the ``checked`` message); None checks the config alone.
        prepare: With ``--prepare``, makes and caches what the output checks need (check weights) and
            returns what it made (sent as the ``prepared`` message); None has nothing to prepare.

    Returns:
        The exit status: 0 on success, 2 on bad input, 3 on bad output. Other failures raise, so the
        driver sees the traceback on stderr and a non-zero status.
    """
    parser = argparse.ArgumentParser(prog=f"python -m workloads.{workload}" if workload else None)
    parser.add_argument("--config", required=True, help="trial config JSON file")
    parser.add_argument("--check", action="store_true", help="check the config and inputs, measure nothing")
    parser.add_argument("--prepare", action="store_true",
                        help="make and cache what the output checks need (check weights), measure nothing")
    args = parser.parse_args()
    reporter = Reporter()
    try:
        config = TrialConfig.from_json(Path(args.config).read_text())
        if workload is not None and config.workload != workload:
            raise BadInput(f"config is for workload {config.workload!r}, not {workload!r}")
    except (BadInput, ProtocolError, OSError) as exc:
        reporter.emit("error", message=one_line(exc))
        return EXIT_BAD_INPUT
    reporter.timed_steps = config.timed_steps
    reporter.outputs_wanted = config.outputs
    try:
        if args.check:
            reporter.emit("checked", **(check(dict(config.params)) if check else {}))
            return 0
        if args.prepare:
            reporter.emit("prepared", **(prepare(dict(config.params)) if prepare else {}))
            return 0
        result = run(dict(config.params), reporter)
    except BadInput as exc:
        reporter.emit("error", message=one_line(exc))
        return EXIT_BAD_INPUT
    except BadOutput as exc:
        reporter.emit("bad_output", message=one_line(exc))
        return EXIT_BAD_OUTPUT
    reporter.emit("result", **result.to_dict())
    return 0


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
