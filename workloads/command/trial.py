"""One trial of a command workload: run the user's program once per step and read its figure.

The config (built by :func:`autotune.launch._command_params`) holds the program's argv template
(``command``), the values of its ``{knob}`` placeholders (``args``), how its figure is read
(``figure_key``, ``figure_pattern``, ``objective``, ``direction``), the folder autotune was started in
(``cwd``), an optional ``check_command``, and the space's ``param`` knobs: ``warmup``, ``steps``,
``trial_seconds`` and ``run_timeout`` are this wrapper's own.

Measuring, as hyperfine does: ``warmup`` untimed runs, then timed runs, ``steps`` at most and, with
``trial_seconds`` > 0, calibrated to last about that long (at least three). Each run is one step; its
time is the run's wall time, process start and exit included. The figure of a run is read, in order:

1. ``figure_pattern`` set: the last match of that regular expression's group in the program's stdout;
2. ``figure_key`` set: that key of the last ``@autotune {...}`` JSON object the program printed;
3. neither: the objective's own name, if the first run prints an ``@autotune`` object holding it;
   otherwise the wall time: runs per second (maximize) or seconds per run (minimize).

Every other number the program prints in ``@autotune`` objects becomes a figure too (its median over
the timed runs), so a program may report ``samples_per_s`` beside its objective. The wrapper invents
no per-sample figures it cannot know; ``wall_seconds_per_run`` is always there.

A quality figure (``quality_key``, optionally read by ``quality_pattern``; see :mod:`autotune.contract`)
guards the answers: every run, warm-up included, must print it (a finite number), else the trial ends as
bad output naming it. The result holds its median over the timed runs under ``quality_key``, and its
lowest and highest as ``<quality_key>_min`` and ``<quality_key>_max``, so that a bound can judge every
timed run.

The program's stdout is captured, never forwarded (its ``@autotune`` lines cannot reach the protocol);
its stderr passes through to the wrapper's (the driver keeps a tail). The program runs in the wrapper's
process group, so the driver's timeout and memory cap stop it with the wrapper. It gets the wrapper's
environment (the trial's environment knobs applied) plus ``AUTOTUNE_PARAMS``: the JSON of the space's
``param`` knobs, as ``autotune exec`` sets it, for a program that reads its in-process knobs itself.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from autotune.contract import PLACEHOLDER
from autotune.measure import summarize
from autotune.protocol import LINE_PREFIX, TrialResult
from workloads.harness import BadInput, BadOutput, Reporter, observed_environment, peak_rss_mb

# The variable ``autotune exec`` sets (autotune.export.PARAMS_VARIABLE), not imported: the driver's
# export module pulls in the report code.
PARAMS_VARIABLE = "AUTOTUNE_PARAMS"
# Keys of the config that tell this wrapper how to run the program; the rest are the space's param knobs.
WRAPPER_KEYS = ("command", "check_command", "args", "figure_key", "figure_pattern", "quality_key", "quality_pattern",
                "objective", "direction", "cwd")
# Lines of the program's stderr kept for a failure's reason (the last non-empty one is quoted).
STDERR_LINES_KEPT = 20
# Seconds to wait for the program's pipes to close after it exits (a grandchild may hold them open).
PIPE_DRAIN_SECONDS = 5.0
DEFAULTS = {"warmup": 1, "steps": 10, "trial_seconds": 0.0, "run_timeout": 0.0}


@dataclass(frozen=True)
class Program:
    """The program a trial runs, read from the config.

    Attributes:
        argv: The command with its placeholders filled.
        check: The check command with its placeholders filled, or None.
        cwd: Folder the program runs in (where autotune was started), or None for the wrapper's.
        env: The program's environment.
        objective: Name of the objective figure.
        maximize: Whether a larger figure is better.
        figure_key: Key of the figure in printed ``@autotune`` objects (None: the objective's, if printed).
        figure_pattern: Regular expression with one group, or None.
        quality_key: Name of the quality figure (and its key in printed ``@autotune`` objects), or None.
        quality_pattern: Regular expression with one group that reads the quality figure, or None.
        run_timeout: Seconds one run may take, or None for no limit of its own.
    """

    argv: list[str]
    check: list[str] | None
    cwd: str | None
    env: dict[str, str]
    objective: str
    maximize: bool
    figure_key: str | None
    figure_pattern: re.Pattern[str] | None
    run_timeout: float | None
    quality_key: str | None = None
    quality_pattern: re.Pattern[str] | None = None


@dataclass(frozen=True)
class Run:
    """One finished run of a program: exit status, captured stdout, the last lines of its stderr."""

    returncode: int
    stdout: str
    stderr_tail: tuple[str, ...]
    timed_out: bool = False

    @property
    def last_stderr_line(self) -> str:
        """The last non-empty stderr line, or a note that there was none."""
        return self.stderr_tail[-1] if self.stderr_tail else "no stderr"


def substitute(template: Sequence[str], args: Mapping[str, str]) -> list[str]:
    """Fill every ``{knob}`` placeholder with its value as text, inside that one argument.

    The value is never split, never evaluated and never seen by a shell: ``--x={v}`` with
    ``v = "$(id); rm -rf ~"`` is the single argument ``--x=$(id); rm -rf ~``.

    Raises:
        BadInput: A placeholder names no knob.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in args:
            known = ", ".join(sorted(args)) or "none"
            raise BadInput(f"placeholder {{{name}}} names no knob with target arg (known: {known})")
        return str(args[name])

    return [PLACEHOLDER.sub(value, arg) for arg in template]


def program_of(params: Mapping[str, Any]) -> Program:
    """Read the program from a trial config.

    Raises:
        BadInput: The config does not describe a program (malformed keys, unknown placeholder).
    """
    command, check_command, args = params.get("command"), params.get("check_command"), params.get("args") or {}
    if not _is_argv(command):
        raise BadInput("config: 'command' must be a non-empty list of strings (an argv, no shell)")
    if check_command is not None and not _is_argv(check_command):
        raise BadInput("config: 'check_command' must be a non-empty list of strings")
    if not (isinstance(args, dict) and all(isinstance(v, str) for v in args.values())):
        raise BadInput("config: 'args' must map knob names to text")
    objective = params.get("objective") or "runs_per_s"
    direction = params.get("direction") or "maximize"
    if direction not in ("maximize", "minimize"):
        raise BadInput(f"config: direction {direction!r} is not maximize or minimize")
    compiled = _regex(params, "figure_pattern")
    quality_key, quality_pattern = params.get("quality_key"), _regex(params, "quality_pattern")
    if quality_key is not None and not (isinstance(quality_key, str) and quality_key.isidentifier()):
        raise BadInput(f"config: quality_key {quality_key!r} is not a figure name")
    if quality_pattern is not None and quality_key is None:
        raise BadInput("config: quality_pattern needs a quality_key naming its figure")
    cwd = params.get("cwd")
    if cwd is not None and not Path(cwd).is_dir():
        raise BadInput(f"the folder the program runs in, {cwd}, is not a directory")
    timeout = _number(params, "run_timeout", 0.0)
    knobs = {k: v for k, v in params.items() if k not in WRAPPER_KEYS}
    env = {**os.environ, PARAMS_VARIABLE: json.dumps(knobs, sort_keys=True)}
    return Program(
        argv=substitute(command, args),
        check=substitute(check_command, args) if check_command else None,
        cwd=cwd,
        env=env,
        objective=str(objective),
        maximize=direction == "maximize",
        figure_key=params.get("figure_key"),
        figure_pattern=compiled,
        run_timeout=timeout or None,
        quality_key=quality_key,
        quality_pattern=quality_pattern,
    )


def _regex(params: Mapping[str, Any], name: str) -> re.Pattern[str] | None:
    pattern = params.get(name)
    try:
        compiled = re.compile(pattern) if pattern is not None else None
    except (re.error, TypeError) as exc:
        raise BadInput(f"{name}: not a regular expression ({exc})") from None
    if compiled is not None and compiled.groups != 1:
        raise BadInput(f"{name}: needs exactly one group, the number")
    return compiled


def check(params: dict[str, Any]) -> dict[str, Any]:
    """Check mode: the program resolves, its placeholders are known, its check command passes.

    Raises:
        BadInput: A program not found or not executable, an unknown placeholder, a failing check.
    """
    program = program_of(params)
    _measuring(params)
    found = resolve(program.argv[0], program.cwd, program.env)
    if program.check is not None:
        resolve(program.check[0], program.cwd, program.env)
        done = run_once(program.check, program, forward=False)
        if done.timed_out:
            raise BadInput(f"the check command ran longer than run_timeout={program.run_timeout:g}s")
        if done.returncode != 0:
            raise BadInput(f"the check command {_status(done.returncode)}: {done.last_stderr_line}")
    found_what = {"program": found, "command": program.argv, "figure": _figure_source(program)}
    if program.quality_key is not None:
        found_what["quality"] = _quality_source(program)
    return found_what


def resolve(name: str, cwd: str | None, env: Mapping[str, str]) -> str:
    """The path ``name`` runs: looked up in ``PATH`` when bare, else relative to ``cwd``.

    Raises:
        BadInput: Not found, or not an executable file.
    """
    if os.sep not in name:
        found = shutil.which(name, path=env.get("PATH", os.defpath))
        if found is None:
            raise BadInput(f"program {name!r} not found")
        return found
    path = Path(cwd or ".", name)
    if not path.is_file():
        raise BadInput(f"program {name!r} not found")
    if not os.access(path, os.X_OK):
        raise BadInput(f"program {name!r} is not executable")
    return str(path)


def run_once(argv: Sequence[str], program: Program, *, forward: bool = True) -> Run:
    """Run ``argv`` to its end (shell=False): stdout captured, stderr passed through and its tail kept.

    Raises:
        BadInput: The program cannot be started (not found, not executable).
    """
    try:
        proc = subprocess.Popen(  # an argv list the user gave, no shell
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=program.cwd, env=program.env, shell=False,
        )
    except FileNotFoundError:
        raise BadInput(f"program {argv[0]!r} not found") from None
    except PermissionError:
        raise BadInput(f"program {argv[0]!r} is not executable") from None
    assert proc.stdout is not None and proc.stderr is not None
    chunks: list[bytes] = []
    tail: deque[str] = deque(maxlen=STDERR_LINES_KEPT)
    readers = [
        threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=_pass_stderr, args=(proc.stderr, tail, forward), daemon=True),
    ]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        proc.wait(timeout=program.run_timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    for reader in readers:
        reader.join(timeout=PIPE_DRAIN_SECONDS)
    return Run(proc.returncode, b"".join(chunks).decode("utf-8", "replace"), tuple(tail), timed_out)


def _pass_stderr(stream: IO[bytes], tail: deque[str], forward: bool) -> None:
    out = sys.stderr.buffer
    for raw in stream:
        if forward:
            out.write(raw)
            out.flush()
        line = raw.decode("utf-8", "replace").strip()
        if line:
            tail.append(line)


def printed_figures(stdout: str) -> dict[str, float]:
    """The numbers of the program's ``@autotune {...}`` lines (a later line's value wins)."""
    figures: dict[str, float] = {}
    for line in stdout.splitlines():
        if not line.startswith(LINE_PREFIX):
            continue
        try:
            data = json.loads(line[len(LINE_PREFIX):])
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            figures.update({k: float(v) for k, v in data.items() if _finite(v)})
    return figures


def pattern_figure(stdout: str, pattern: re.Pattern[str]) -> float | None:
    """The number of the last match of ``pattern``'s group in ``stdout``, or None."""
    for match in reversed(list(pattern.finditer(stdout))):
        try:
            value = float(match.group(1))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            return value
    return None


def run(params: dict[str, Any], reporter: Reporter) -> TrialResult:
    """Run one trial: warm-up runs, timed runs, the figures of the timed runs."""
    program = program_of(params)
    warmup, steps, trial_seconds = _measuring(params)
    resolve(program.argv[0], program.cwd, program.env)
    # None until the first run shows whether an objective-named figure is printed (case 3 above).
    mode: list[str | None] = [_mode(program)]
    figures: list[float] = []
    extras: list[dict[str, float]] = []
    qualities: list[float] = []

    def step(index: int) -> float | None:
        done = run_once(program.argv, program)
        if done.timed_out:
            raise RuntimeError(f"the program ran longer than run_timeout={program.run_timeout:g}s")
        if done.returncode != 0:
            raise RuntimeError(f"the program {_status(done.returncode)}: {done.last_stderr_line}")
        printed = printed_figures(done.stdout)
        if mode[0] is None:
            mode[0] = "printed" if program.objective in printed else "wall"
        figure = _figure(done.stdout, printed, program, mode[0])
        quality = _quality(done.stdout, printed, program)
        if index >= warmup:
            extras.append(printed)
            if figure is not None:
                figures.append(figure)
            if quality is not None:
                qualities.append(quality)
        return figure

    work = 0.0 if mode[0] in ("printed", "pattern") else 1.0
    warmup_times, step_times = reporter.time_steps(step, warmup, steps, work_per_step=work,
                                                   trial_seconds=trial_seconds)
    summary = summarize(step_times)
    median = summary.median
    if mode[0] == "wall":
        value, work = (1.0 / median if program.maximize else median), 1.0
    else:
        value = statistics.median(figures)
        work = value * median if program.maximize else median / value
    result_figures = _extra_figures(extras)
    result_figures.update({program.objective: value, "wall_seconds_per_run": median})
    effective = {**observed_environment(), "command": program.argv, "figure": _figure_source(program, mode[0])}
    if program.quality_key is not None:
        key = program.quality_key
        result_figures.update({key: statistics.median(qualities), f"{key}_min": min(qualities),
                               f"{key}_max": max(qualities)})
        effective["quality"] = _quality_source(program)
    return TrialResult(
        workload="command",
        params=params,
        warmup_seconds=warmup_times,
        step_seconds=step_times,
        median_step_s=median,
        mad_step_s=summary.mad,
        cv=summary.cv,
        work_per_step=work,
        figures=result_figures,
        peak_rss_mb=max(peak_rss_mb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        setup_seconds=reporter.setup_seconds,
        effective=effective,
    )


def _mode(program: Program) -> str | None:
    if program.figure_pattern is not None:
        return "pattern"
    return "printed" if program.figure_key else None


def _figure(stdout: str, printed: Mapping[str, float], program: Program, mode: str) -> float | None:
    if mode == "wall":
        return None
    if mode == "pattern":
        assert program.figure_pattern is not None
        value = pattern_figure(stdout, program.figure_pattern)
        if value is None:
            raise RuntimeError(f"the program printed no figure matching figure_pattern "
                               f"{program.figure_pattern.pattern!r}")
        return value
    key = program.figure_key or program.objective
    if key not in printed:
        raise RuntimeError(f"the program printed no figure {key} (a line @autotune {{\"{key}\": ...}})")
    return printed[key]


def _quality(stdout: str, printed: Mapping[str, float], program: Program) -> float | None:
    """The run's quality figure, or None when none is declared.

    Raises:
        BadOutput: One is declared and the run printed none (or not a finite number).
    """
    if program.quality_key is None:
        return None
    if program.quality_pattern is not None:
        value = pattern_figure(stdout, program.quality_pattern)
    else:
        value = printed.get(program.quality_key)
    if value is None:
        raise BadOutput(f"a run printed no quality figure {program.quality_key} ({_quality_source(program)}): "
                        "its answers cannot be judged")
    return value


def _quality_source(program: Program) -> str:
    if program.quality_pattern is not None:
        return f"quality_pattern {program.quality_pattern.pattern}"
    return f"printed @autotune key {program.quality_key}"


def _figure_source(program: Program, mode: str | None = None) -> str:
    mode = mode or _mode(program)
    if mode == "pattern":
        assert program.figure_pattern is not None
        return f"figure_pattern {program.figure_pattern.pattern}"
    if mode == "printed":
        return f"printed @autotune key {program.figure_key or program.objective}"
    if mode == "wall":
        return "wall time per run"
    return f"printed @autotune key {program.objective} if the program prints it, else wall time per run"


def _extra_figures(extras: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Median over the timed runs of every number the program printed."""
    keys = sorted({k for printed in extras for k in printed})
    return {k: statistics.median([p[k] for p in extras if k in p]) for k in keys}


def _measuring(params: Mapping[str, Any]) -> tuple[int, int, float]:
    warmup, steps = _number(params, "warmup", 0), _number(params, "steps", 1)
    if int(warmup) != warmup or int(steps) != steps:
        raise BadInput("warmup and steps must be whole numbers")
    return int(warmup), int(steps), float(_number(params, "trial_seconds", 0.0))


def _number(params: Mapping[str, Any], name: str, low: float) -> float:
    value = params.get(name, DEFAULTS[name])
    if not _finite(value) or value < low:
        raise BadInput(f"{name}: {value!r} is not a number of at least {low:g}")
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_argv(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(a, str) and a for a in value)


def _status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"
