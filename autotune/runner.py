"""Run one trial in a fresh child process and turn whatever happens into a :class:`TrialOutcome`.

The runner owns the child's whole life: it writes the config file, starts the workload in a new
process group with the trial's environment and CPU affinity applied before exec, reads protocol lines
as they come (calling back after every timed step, so the caller can prune), watches wall time and the
memory of the process tree, and always kills the whole group at the end, so no grandchild survives.
Failures are values: a crash, a hang, too much memory, bad output or bad input each become an outcome
with a reason and the tail of stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from autotune.protocol import (
    Outcome,
    ProtocolError,
    TrialConfig,
    TrialResult,
    decode_line,
)

if TYPE_CHECKING:
    from autotune.layout import Layout

STDERR_TAIL_CHARS = 2000
POLL_SECONDS = 0.2
# Seconds a child may take to exit after its result message before it is stopped.
EXIT_AFTER_RESULT_SECONDS = 10.0
# Seconds a child gets between SIGTERM and SIGKILL when it is stopped on purpose.
TERMINATE_GRACE_SECONDS = 2.0
# What the driver sees of a running step is the time since the previous step's message reached it: the
# step itself, plus the child's work between steps and the message's way through the pipe. This much is
# taken off before that time counts as a lower bound of the step's own time.
RUNNING_SLACK_SECONDS = 1.0

StepCallback = Callable[[list[float], Mapping[str, Any]], bool]
"""Called with (timed step times so far, the setup message plus ``step_figures``: the figures the steps
carried, if any) after each timed step; True prunes."""

WaitCallback = Callable[[float, Mapping[str, Any]], bool]
"""Called with (seconds since the setup message, the setup message) while warm-up runs; True prunes."""

RunningCallback = Callable[[list[float], Mapping[str, Any]], bool]
"""Called while a timed step runs with (the timed step times so far, then the seconds the running step has
taken until now: a lower bound of its time) and the setup message; True prunes. Not called for workloads
whose steps carry their own figure, where a step's time says nothing about its figure."""


@dataclass(frozen=True)
class TrialSpec:
    """Everything needed to launch one trial.

    Attributes:
        module: Python module run with ``-m``, e.g. ``workloads.unet3d``.
        config: The in-process config sent to the child.
        env: Environment changes: a value sets the variable, None removes it.
        cpus: Logical CPUs the child is pinned to, or None to leave affinity alone.
        timeout_s: Wall-clock limit for the whole child, start-up included.
        memory_cap_mb: Limit on the resident memory of the child and its descendants.
        python: Interpreter that runs the child.
        check: Run the workload's check mode (``--check``) instead of a measurement.
        layout: Run several instances on disjoint cores (:mod:`autotune.instances`); ``cpus`` is then unused.
        objective: The objective's figure name, which several instances add up over their common window.
        rates: Other figures that are rates (per second), added up like the objective.
        prepare: Run the workload's prepare mode (``--prepare``: make and cache what output checks need).
    """

    module: str
    config: TrialConfig
    env: Mapping[str, str | None] = field(default_factory=dict)
    cpus: tuple[int, ...] | None = None
    timeout_s: float = 600.0
    memory_cap_mb: float | None = None
    python: str = sys.executable
    check: bool = False
    layout: Layout | None = None
    objective: str | None = None
    rates: tuple[str, ...] = ()
    prepare: bool = False


@dataclass(frozen=True)
class TrialOutcome:
    """How one trial ended and what it measured.

    Attributes:
        outcome: The trial's end state.
        reason: Human-readable reason for anything but OK.
        result: The workload's result record (OK only).
        step_seconds: Timed step times seen, complete or partial.
        warmup_seconds: Warm-up step times seen.
        wall_seconds: Wall time of the child.
        returncode: The child's exit status (negative: killed by that signal).
        peak_rss_mb: Peak resident memory of the process tree the runner saw.
        stderr_tail: The last characters of the child's stderr.
        checked: What a check-mode child reported (its ``checked`` message; ``prepared`` in prepare
            mode), else None.
        planned_steps: Timed steps the child said it would run (its ``plan``, else its ``setup``), if any.
        instances: With several instances, each one's record (index, CPUs, memory nodes, figures).
        running_seconds: Seconds the timed step in progress had run when the trial was pruned during it.
    """

    outcome: Outcome
    reason: str = ""
    result: TrialResult | None = None
    step_seconds: tuple[float, ...] = ()
    warmup_seconds: tuple[float, ...] = ()
    wall_seconds: float = 0.0
    returncode: int | None = None
    peak_rss_mb: float = 0.0
    stderr_tail: str = ""
    checked: Mapping[str, Any] | None = None
    planned_steps: int | None = None
    instances: tuple[Mapping[str, Any], ...] = ()
    running_seconds: float | None = None


class TrialRunner:
    """Runs trials one at a time; ``run`` is the only entry point."""

    def run(
        self, spec: TrialSpec, on_step: StepCallback | None = None, on_wait: WaitCallback | None = None,
        on_running: RunningCallback | None = None,
    ) -> TrialOutcome:
        """Run one trial to its end.

        Args:
            spec: What to launch.
            on_step: Called after each timed step; returning True prunes the trial.
            on_wait: Called while the first timed step is awaited (warm-up running); True prunes.
            on_running: Called while a timed step runs, with its time so far; True prunes.

        Returns:
            The outcome; this method does not raise for anything the child does.
        """
        with tempfile.TemporaryDirectory(prefix="autotune-trial-") as workdir:
            if spec.layout is not None and spec.layout.instances > 1 and not (spec.check or spec.prepare):
                from autotune.instances import InstanceGroup

                return InstanceGroup(spec, Path(workdir), on_step, on_wait, on_running).run()
            return _Execution(spec, Path(workdir), on_step, on_wait, on_running=on_running).run()


class _Execution:
    def __init__(
        self, spec: TrialSpec, workdir: Path, on_step: StepCallback | None, on_wait: WaitCallback | None = None,
        lines: queue.Queue[tuple[int, str | None]] | None = None, tag: int = 0,
        on_running: RunningCallback | None = None,
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.on_step = on_step
        self.on_wait = on_wait
        self.on_running = on_running
        # When the timed step now running began (monotonic), None while none runs; see running_step().
        self.step_began: float | None = None
        self.figured = False
        self.plain_steps = 0
        self.running_stop: float | None = None
        self.setup_at = 0.0
        self.lines: queue.Queue[tuple[int, str | None]] = lines if lines is not None else queue.Queue()
        self.tag = tag
        self.ready = False
        self.windows: list[tuple[float, float]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.steps: list[float] = []
        self.warmups: list[float] = []
        self.result: TrialResult | None = None
        self.error: str | None = None
        self.bad_output: str | None = None
        self.peak_rss_mb = 0.0
        self.setup: dict[str, Any] = {}
        self.result_at = 0.0
        self.checked: dict[str, Any] | None = None
        self.planned_steps: int | None = None
        self.figures: list[float] = []

    def run(self) -> TrialOutcome:
        start = time.monotonic()
        try:
            proc, reader = self.start()
        except (OSError, subprocess.SubprocessError) as exc:
            return TrialOutcome(Outcome.CRASHED, reason=f"could not start the trial: {exc}")
        try:
            stop = self._watch(proc, start)
        finally:
            _kill_group(proc)
            reader.join(timeout=5)
        wall = time.monotonic() - start
        return self._outcome(stop, proc.returncode, wall, self.stderr_tail())

    def start(
        self, env: Mapping[str, str | None] | None = None, prefix: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> tuple[subprocess.Popen[bytes], threading.Thread]:
        """Start the child (``prefix`` words before the interpreter, ``env`` over the spec's) and its reader.

        Raises:
            OSError, subprocess.SubprocessError: It could not be started.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "config.json"
        config_path.write_text(self.spec.config.to_json())
        with open(self.workdir / "stderr.txt", "wb") as stderr:
            proc = subprocess.Popen(
                [*(prefix or []), self.spec.python, "-m", self.spec.module, "--config", str(config_path),
                 *(["--check"] if self.spec.check else []), *(["--prepare"] if self.spec.prepare else [])],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=self.workdir,
                env=_child_env({**self.spec.env, **(env or {})}),
                start_new_session=True,
                preexec_fn=_preexec(self.spec.cpus),
                pass_fds=pass_fds,
            )
        self.proc = proc
        reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        reader.start()
        return proc, reader

    def stderr_tail(self) -> str:
        """The last characters of the child's stderr."""
        return _tail(self.workdir / "stderr.txt")

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.lines.put((self.tag, raw.decode("utf-8", "replace").rstrip("\n")))
        self.lines.put((self.tag, None))

    def _watch(self, proc: subprocess.Popen[bytes], start: float) -> tuple[Outcome, str] | None:
        """Follow the child until it exits or must be stopped; return why it was stopped."""
        deadline = start + self.spec.timeout_s
        eof = False
        exited_at: float | None = None
        while True:
            try:
                line = self.lines.get(timeout=POLL_SECONDS)[1]
            except queue.Empty:
                line = ""
            if line is None:
                eof = True
            elif line and (stop := self._handle(line)):
                return stop
            if proc.poll() is not None:
                exited_at = exited_at or time.monotonic()
                # A grandchild may hold stdout open after the child exits: stop waiting for EOF.
                if eof or time.monotonic() - exited_at > 1.0:
                    return None
            if self.on_wait and self.setup and not self.steps and self.result is None:
                waited = time.monotonic() - self.setup_at
                if self.on_wait(waited, self.setup):
                    return Outcome.PRUNED, f"pruned after {waited:.0f}s of warm-up without a timed step"
            running = self.running_step() if self.on_running else None
            if running is not None and self.on_running([*self.steps, running], self.setup):
                self.running_stop = running
                return Outcome.PRUNED, running_reason(len(self.steps), running)
            if self.result is not None and time.monotonic() - self.result_at > EXIT_AFTER_RESULT_SECONDS:
                return None
            if (stop := self._check_memory(proc)) is not None:
                return stop
            if time.monotonic() > deadline:
                return Outcome.TIMED_OUT, f"no result within the trial timeout of {self.spec.timeout_s:g}s"

    def _handle(self, line: str) -> tuple[Outcome, str] | None:
        try:
            message = decode_line(line)
        except ProtocolError as exc:
            return Outcome.BAD_OUTPUT, f"unreadable protocol line: {exc}"
        if message is None:
            return None
        kind = message["kind"]
        if kind == "step":
            seconds = message.get("seconds")
            if not isinstance(seconds, int | float) or seconds < 0:
                return Outcome.BAD_OUTPUT, "step message without a valid 'seconds'"
            if isinstance(message.get("figure"), int | float):
                self.figured = True
            else:
                self.plain_steps += 1
            if message.get("warmup"):
                self.warmups.append(float(seconds))
                if (warmup := _count(self.setup.get("warmup"))) is not None and len(self.warmups) >= warmup:
                    self.step_began = time.monotonic()
            else:
                self.steps.append(float(seconds))
                self.step_began = time.monotonic()
                began, ended = message.get("start"), message.get("end")
                if isinstance(began, int | float) and isinstance(ended, int | float) and ended >= began:
                    self.windows.append((float(began), float(ended)))
                figure = message.get("figure")
                if isinstance(figure, int | float) and not isinstance(figure, bool):
                    self.figures.append(float(figure))
                progress = {**self.setup, "step_figures": list(self.figures)}
                if self.on_step and self.on_step(list(self.steps), progress):
                    count = len(self.steps)
                    return Outcome.PRUNED, f"pruned after {count} timed step{'' if count == 1 else 's'}"
        elif kind == "setup":
            self.setup = message
            self.setup_at = time.monotonic()
            if _count(self.setup.get("warmup")) == 0:
                self.step_began = self.setup_at
        elif kind == "result":
            try:
                self.result = TrialResult.from_dict({k: v for k, v in message.items() if k != "kind"})
                self.result_at = time.monotonic()
            except ProtocolError as exc:
                self.bad_output = str(exc)
        elif kind == "error":
            self.error = str(message.get("message", "bad input"))
        elif kind == "bad_output":
            return Outcome.BAD_OUTPUT, str(message.get("message") or "the workload found its output unusable")
        elif kind == "plan":
            steps = message.get("steps")
            if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0:
                self.planned_steps = steps
        elif kind in ("checked", "prepared"):
            self.checked = {k: v for k, v in message.items() if k != "kind"}
        elif kind == "ready":
            self.ready = True
            self.step_began = None  # it waits for the go of every instance: InstanceGroup starts the clock
        return None

    def running_step(self, now: float | None = None) -> float | None:
        """A lower bound of the time of the timed step in progress, or None when there is none.

        The bound is the time since the previous step's message less :data:`RUNNING_SLACK_SECONDS`; None
        until that is positive, once the planned steps are done, after the result, when the child has
        exited, and unless a step (warm-up or timed) has ended without a figure of its own and none with
        one: a step that carries its figure (a program that prints its throughput) is judged by that
        figure, and its time is no bound on it.
        """
        if self.step_began is None or self.result is not None or self.figured or not self.plain_steps:
            return None
        if self.proc is not None and self.proc.poll() is not None:
            return None
        planned = self.planned_steps or _int(self.setup.get("steps"))
        if planned and len(self.steps) >= planned:
            return None
        bound = (now if now is not None else time.monotonic()) - self.step_began - RUNNING_SLACK_SECONDS
        return bound if bound > 0 else None

    def _check_memory(self, proc: subprocess.Popen[bytes]) -> tuple[Outcome, str] | None:
        rss = _tree_rss_mb(proc.pid)
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        cap = self.spec.memory_cap_mb
        if cap is not None and rss > cap:
            return Outcome.OUT_OF_MEMORY, f"resident memory {rss:.0f} MiB exceeded the cap of {cap:.0f} MiB"
        return None

    def _outcome(
        self, stop: tuple[Outcome, str] | None, returncode: int | None, wall: float, tail: str
    ) -> TrialOutcome:
        common = {
            "step_seconds": tuple(self.steps),
            "warmup_seconds": tuple(self.warmups),
            "wall_seconds": wall,
            "returncode": returncode,
            "peak_rss_mb": self.peak_rss_mb,
            "stderr_tail": tail,
            "planned_steps": self.planned_steps or _int(self.setup.get("steps")),
            "running_seconds": self.running_stop,
        }
        if stop is not None:
            return TrialOutcome(stop[0], reason=stop[1], **common)
        if self.error is not None:
            return TrialOutcome(Outcome.BAD_INPUT, reason=self.error, **common)
        if (self.spec.check or self.spec.prepare) and self.checked is not None and returncode == 0:
            return TrialOutcome(Outcome.OK, checked=self.checked, **common)
        if self.result is not None and self.bad_output is None:
            # The result is the trial's final record; a hang or crash at interpreter exit after it
            # (TensorFlow's shutdown is not always clean) does not undo the measurement.
            note = "" if returncode == 0 else f"exit status {returncode} after the result"
            return TrialOutcome(Outcome.OK, reason=note, result=self.result, **common)
        if returncode is not None and returncode < 0:
            return TrialOutcome(_signal_outcome(-returncode), reason=_signal_reason(-returncode), **common)
        if returncode:
            last = tail.strip().splitlines()[-1] if tail.strip() else "no stderr"
            return TrialOutcome(Outcome.CRASHED, reason=f"exit status {returncode}: {last}", **common)
        if self.bad_output is not None:
            return TrialOutcome(Outcome.BAD_OUTPUT, reason=self.bad_output, **common)
        if self.result is None:
            return TrialOutcome(Outcome.BAD_OUTPUT, reason="the trial exited without a result", **common)
        return TrialOutcome(Outcome.OK, result=self.result, **common)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def running_reason(done: int, running: float) -> str:
    """Why a trial was pruned while its timed step ``done + 1`` ran for ``running`` seconds."""
    return f"pruned {running:.1f}s into timed step {done + 1}: too slow already, whatever its end"


def _child_env(changes: Mapping[str, str | None]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _preexec(cpus: tuple[int, ...] | None) -> Callable[[], None] | None:
    """What the child runs between fork and exec: die with the driver (Linux), then pin its CPUs.

    A driver killed with SIGKILL cannot stop its trial, and the trial runs in a session of its own
    (so a Ctrl-C at the terminal reaches only the driver): without a parent-death signal it would
    go on measuring, on cores the next run measures on. ``PR_SET_PDEATHSIG`` makes the kernel send
    SIGKILL to the child when the thread that forked it exits; the driver forks trials from its
    main thread, whose end is the driver's end. The setting survives exec (the interpreter is not
    set-user-ID). Grandchildren are not covered; the group kill at the end of a trial is.
    """
    chosen = None if cpus is None else set(cpus)
    prctl = _prctl()
    parent = os.getpid()
    if prctl is None and chosen is None:
        return None

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # the driver died before the signal was armed
                os._exit(1)
        if chosen is not None:
            os.sched_setaffinity(0, chosen)

    return preexec


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, loaded before any fork (never in the child), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def _tree_rss_mb(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / 2**20


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the child's whole process group: SIGTERM, a grace period, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=TERMINATE_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_outcome(signum: int) -> Outcome:
    return Outcome.OUT_OF_MEMORY if signum == signal.SIGKILL else Outcome.CRASHED


def _signal_reason(signum: int) -> str:
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
    if signum == signal.SIGKILL:
        return f"killed by {name} (most likely the kernel's out-of-memory killer)"
    if signum == signal.SIGSEGV:
        return f"killed by {name} (segmentation fault)"
    return f"killed by signal {name}"


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - STDERR_TAIL_CHARS))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
