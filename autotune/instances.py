"""One trial as N instances of the workload on disjoint cores, measured together.

:class:`InstanceGroup` is what :class:`autotune.runner.TrialRunner` runs for a spec with a
:class:`~autotune.layout.Layout` of several instances. It starts every instance at once, each pinned to
its slot's CPUs (memory bound to its NUMA nodes with ``numactl`` where there are several), told its index
and the count (:func:`autotune.layout.instance_env`), and given a barrier pipe
(:data:`autotune.protocol.BARRIER_VARIABLE`). An instance warms up, says ``ready`` and waits; when all are
ready the group writes the go to every pipe, so their timed steps run together.

The trial's figure is the aggregate over the window in which all N were measuring (from the latest first
timed step's start to the earliest last step's end): each instance's work inside it (a step cut by the
window counts in proportion) over its length. Per-instance figures stay in the outcome's ``instances``.
The pruner sees, after the k-th timed step of every instance, the slowest instance's k-th step with the
work of all of them. The output-agreement check runs in the first instance. One instance failing fails
the trial with its reason; the timeout and the memory cap are for all of them together, and every
instance's process group is killed at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from autotune.layout import instance_env, membind_prefix
from autotune.measure import summarize
from autotune.protocol import BARRIER_VARIABLE, Outcome, TrialResult
from autotune.runner import (
    EXIT_AFTER_RESULT_SECONDS,
    POLL_SECONDS,
    TERMINATE_GRACE_SECONDS,
    RunningCallback,
    StepCallback,
    TrialOutcome,
    TrialSpec,
    WaitCallback,
    _Execution,
    _tree_rss_mb,
    running_reason,
)


class InstanceGroup:
    """Runs one trial of ``spec.layout`` instances to its end (see the module docstring); ``run`` once."""

    def __init__(self, spec: TrialSpec, workdir: Path, on_step: StepCallback | None,
                 on_wait: WaitCallback | None = None, on_running: RunningCallback | None = None) -> None:
        assert spec.layout is not None
        self.spec = spec
        self.layout = spec.layout
        self.on_step = on_step
        self.on_wait = on_wait
        self.on_running = on_running
        self.running_stop: float | None = None
        self.lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        # The output-agreement check (TrialConfig.outputs) runs in the first instance only.
        self.children = [
            _Execution(dataclasses.replace(spec, cpus=slot.cpus, layout=None, config=dataclasses.replace(
                spec.config, outputs=spec.config.outputs and i == 0)),
                       workdir / f"instance-{i}", None, lines=self.lines, tag=i)
            for i, slot in enumerate(self.layout.slots)
        ]
        self.peak_rss_mb = 0.0
        self.reported = 0

    def run(self) -> TrialOutcome:
        start = time.monotonic()
        n = len(self.children)
        procs: list[subprocess.Popen[bytes]] = []
        readers: list[threading.Thread] = []
        pipes: list[int] = []
        failed: int | None = None
        stop: tuple[Outcome, str] | None = None
        try:
            for index, (child, slot) in enumerate(zip(self.children, self.layout.slots, strict=True)):
                read_end, write_end = os.pipe()
                pipes.append(write_end)
                try:
                    proc, reader = child.start({**instance_env(index, n), BARRIER_VARIABLE: str(read_end)},
                                               membind_prefix(slot), pass_fds=(read_end,))
                except (OSError, subprocess.SubprocessError) as exc:
                    stop = Outcome.CRASHED, f"instance {index + 1} of {n}: could not start: {exc}"
                    break
                finally:
                    os.close(read_end)
                procs.append(proc)
                readers.append(reader)
            if stop is None:
                stop, failed = self._watch(procs, pipes, start)
        finally:
            _kill_groups(procs)
            for write_end in pipes:
                with contextlib.suppress(OSError):
                    os.close(write_end)
            for reader in readers:
                reader.join(timeout=5)
        return self._outcome(stop, failed, [p.returncode for p in procs], time.monotonic() - start)

    def _watch(
        self, procs: list[subprocess.Popen[bytes]], pipes: list[int], start: float
    ) -> tuple[tuple[Outcome, str] | None, int | None]:
        """Follow the instances until all end or one must stop the trial: (why it stopped, a failed instance)."""
        n = len(procs)
        deadline = start + self.spec.timeout_s
        eof = [False] * n
        exited_at: list[float | None] = [None] * n
        released = False
        while True:
            try:
                tag, line = self.lines.get(timeout=POLL_SECONDS)
            except queue.Empty:
                tag, line = 0, ""
            if line is None:
                eof[tag] = True
            elif line and (stop := self.children[tag]._handle(line)):
                return (stop[0], f"instance {tag + 1} of {n}: {stop[1]}"), None
            now = time.monotonic()
            for i, proc in enumerate(procs):
                if proc.poll() is not None:
                    exited_at[i] = exited_at[i] or now
                    gone = eof[i] or now - (exited_at[i] or now) > 1.0
                    if gone and self.children[i].result is None:
                        return None, i
            if all(p.poll() is not None for p in procs) and all(
                    eof[i] or now - (exited_at[i] or now) > 1.0 for i in range(n)):
                return None, None
            if not released and all(c.ready for c in self.children):
                released = True
                for write_end in pipes:
                    with contextlib.suppress(OSError):
                        os.write(write_end, b"g")
                for child in self.children:
                    child.step_began = time.monotonic()
            if (stop := self._progress()) is not None:
                return stop, None
            results = [c.result_at for c in self.children if c.result is not None]
            if len(results) == n and now - max(results) > EXIT_AFTER_RESULT_SECONDS:
                return None, None
            rss = sum(_tree_rss_mb(p.pid) for p in procs)
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            cap = self.spec.memory_cap_mb
            if cap is not None and rss > cap:
                return (Outcome.OUT_OF_MEMORY, f"resident memory of the {n} instances, {rss:.0f} MiB, exceeded "
                                               f"the cap of {cap:.0f} MiB"), None
            if now > deadline:
                return (Outcome.TIMED_OUT, f"no result from all {n} instances within the trial timeout of "
                                           f"{self.spec.timeout_s:g}s"), None

    def _progress(self) -> tuple[Outcome, str] | None:
        """Call the pruner with the aggregate of the steps every instance has timed; the warm-up wait too."""
        done = min(len(c.steps) for c in self.children)
        while self.on_step and self.reported < done:
            self.reported += 1
            if self.on_step(self._rounds(self.reported), {**self._setup(), "step_figures": []}):
                count = self.reported
                return Outcome.PRUNED, f"pruned after {count} timed step{'' if count == 1 else 's'} of every instance"
        waiting = done == 0 and all(c.setup for c in self.children) and not any(c.result for c in self.children)
        if self.on_wait and waiting:
            waited = time.monotonic() - max(c.setup_at for c in self.children)
            if self.on_wait(waited, self._setup()):
                return Outcome.PRUNED, f"pruned after {waited:.0f}s of warm-up without a timed step"
        running = self._running_round() if self.on_running else None
        if running is not None and self.on_running([*self._rounds(self.reported), running], self._setup()):
            self.running_stop = running
            return Outcome.PRUNED, f"{running_reason(self.reported, running)} (the slowest of the instances)"
        return None

    def _running_round(self) -> float | None:
        """A lower bound of the round in progress (its slowest instance), or None when no round runs."""
        if any(c.figured for c in self.children):
            return None
        now = time.monotonic()
        bounds = [c.steps[self.reported] if len(c.steps) > self.reported else c.running_step(now)
                  for c in self.children]
        if all(len(c.steps) > self.reported for c in self.children):
            return None
        known = [b for b in bounds if b is not None]
        return max(known) if known and any(c.step_began is not None for c in self.children) else None

    def _setup(self) -> dict[str, Any]:
        first = dict(self.children[0].setup)
        works = [c.setup.get("work_per_step") for c in self.children]
        if all(isinstance(w, int | float) for w in works):
            first["work_per_step"] = float(sum(works))  # type: ignore[arg-type]
        return first

    def _rounds(self, count: int) -> list[float]:
        """The k-th step of the trial: the slowest instance's k-th timed step, for k up to ``count``."""
        return [max(c.steps[k] for c in self.children) for k in range(count)]

    def _outcome(
        self, stop: tuple[Outcome, str] | None, failed: int | None, codes: list[int | None], wall: float
    ) -> TrialOutcome:
        n = len(self.children)
        outcomes = [c._outcome(None, codes[i] if i < len(codes) else None, wall, c.stderr_tail())
                    for i, c in enumerate(self.children)]
        rounds = self._rounds(min(len(c.steps) for c in self.children))
        common = {"step_seconds": tuple(rounds), "wall_seconds": wall, "peak_rss_mb": self.peak_rss_mb,
                  "running_seconds": self.running_stop,
                  "planned_steps": min((o.planned_steps or 0) for o in outcomes) or None,
                  "instances": tuple(self._instance(i, o) for i, o in enumerate(outcomes))}
        if stop is not None:
            tails = "".join(o.stderr_tail for o in outcomes if o.stderr_tail)[-2000:]
            return TrialOutcome(stop[0], reason=stop[1], stderr_tail=tails, **common)
        if failed is None:
            failed = next((i for i, o in enumerate(outcomes) if o.outcome is not Outcome.OK), None)
        if failed is not None:
            bad = outcomes[failed]
            outcome = bad.outcome if bad.outcome is not Outcome.OK else Outcome.BAD_OUTPUT
            reason = bad.reason or "the instance exited without a result"
            return TrialOutcome(outcome, reason=f"instance {failed + 1} of {n}: {reason}",
                                returncode=bad.returncode, stderr_tail=bad.stderr_tail, **common)
        results = [o.result for o in outcomes]
        assert all(r is not None for r in results)
        result, note = self._combine(results, rounds)  # type: ignore[arg-type]
        return TrialOutcome(Outcome.OK, reason=note, result=result, returncode=0, **common)

    def _instance(self, index: int, outcome: TrialOutcome) -> dict[str, Any]:
        slot = self.layout.slots[index]
        entry: dict[str, Any] = {"index": index, "cpus": list(slot.cpus), "membind": list(slot.nodes),
                                 "outcome": outcome.outcome.value}
        if outcome.result is not None:
            entry.update(median_step_s=outcome.result.median_step_s, cv=outcome.result.cv,
                         cpu_affinity=outcome.result.effective.get("cpu_affinity"), **outcome.result.figures)
        return entry

    def _combine(self, results: list[TrialResult], rounds: list[float]) -> tuple[TrialResult, str]:
        """The trial's result: the objective and the other rates added up over the common window."""
        objective = self.spec.objective
        own = [r.figures.get(objective) for r in results] if objective else []
        window = common_window([c.windows for c in self.children])
        note = ""
        if window is None or not objective or any(c.figures for c in self.children):
            # Programs that print their own figure (or no timestamps): the sum of the instances' figures.
            factor = 1.0
            total = sum(v for v in own if isinstance(v, int | float))
            if window is None and objective:
                note = "the instances' timed steps never overlapped: their figures are added up"
        else:
            works = [work_in(c.windows, r.work_per_step, window) for c, r in zip(self.children, results, strict=True)]
            total = sum(works) / (window[1] - window[0])
            factor = total / sum(v for v in own if isinstance(v, int | float)) if any(own) else 1.0
        figures: dict[str, float] = {}
        for name in results[0].figures:
            values = [r.figures[name] for r in results if name in r.figures]
            if name == objective:
                figures[name] = total
            elif name in self.spec.rates:
                figures[name] = sum(values) * factor
            else:
                figures[name] = max(values)  # a latency, a per-step count: the slowest instance's
        steps = rounds or [statistics.median(r.step_seconds) for r in results]
        summary = summarize(steps)
        effective = {**results[0].effective, "instances": len(results),
                     "window_s": None if window is None else window[1] - window[0]}
        return TrialResult(
            workload=results[0].workload, params=results[0].params,
            warmup_seconds=[max(r.warmup_seconds[k] for r in results) for k in range(min(len(r.warmup_seconds)
                                                                                       for r in results))],
            step_seconds=list(steps), median_step_s=summary.median, mad_step_s=summary.mad, cv=summary.cv,
            work_per_step=float(sum(r.work_per_step for r in results)), figures=figures,
            peak_rss_mb=float(sum(r.peak_rss_mb for r in results)),
            setup_seconds=max(r.setup_seconds for r in results), effective=effective, outputs=results[0].outputs,
        ), note


def common_window(windows: list[list[tuple[float, float]]]) -> tuple[float, float] | None:
    """The span in which every instance was timing steps: latest first start to earliest last end."""
    if not windows or any(not w for w in windows):
        return None
    start, end = max(w[0][0] for w in windows), min(w[-1][1] for w in windows)
    return (start, end) if end > start else None


def work_in(steps: list[tuple[float, float]], work_per_step: float, window: tuple[float, float]) -> float:
    """Work one instance did inside ``window``: each step's work in proportion to its part in the window."""
    total = 0.0
    for began, ended in steps:
        overlap = min(ended, window[1]) - max(began, window[0])
        if overlap > 0 and ended > began:
            total += work_per_step * overlap / (ended - began)
    return total


def _kill_groups(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop every instance's process group together: SIGTERM to all, one grace period, then SIGKILL."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    grace_end = time.monotonic() + TERMINATE_GRACE_SECONDS
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, grace_end - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

