"""Recorded landscapes: a grid of configurations, each measured several times, kept as a file.

A landscape file (JSON Lines, ``benchmarks/landscapes/*.jsonl``) is written by
``benchmarks/record_landscape.py`` and read by :mod:`autotune.replay`. Its first line is the header: the
schema, the host (:meth:`autotune.host.HostInfo.to_dict`), the space file and pins, the searched knobs
with their Optuna distributions (so a replay needs no space file and no host facts) and the grid's
configurations. Every further line is one measurement of one configuration in a fresh process (asv and
hyperfine write after every benchmark, so an interruption loses nothing):
``{"kind": "measurement", "config": ID, "repeat": R, "outcome": ..., "step_seconds": [...],
"warmup_seconds": [...], "wall_seconds": ..., "setup_seconds": ..., "work_per_step": ..., "value": ...}``.

The target (:meth:`Landscape.targets`) is one that noise cannot fake: a configuration reaches the best
when its median over repeats is within the larger of :data:`MIN_TOLERANCE` and twice the best
configuration's between-run CV.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
# The target's floor: configurations within 3% of the best are taken as equal (the definition).
MIN_TOLERANCE = 0.03
# ... or within twice the best configuration's between-run CV, when that is larger.
CV_FACTOR = 2.0
# The older target, reported beside the noise-aware one.
FRACTION_TARGET = 0.95


@dataclass(frozen=True)
class Measurement:
    """One measurement of one configuration in a fresh process.

    Attributes:
        config: Id of the configuration (index into :attr:`Landscape.configs`).
        repeat: Which round of the interleaved recording it came from.
        outcome: The trial's outcome (``ok``, ``crashed``, ``timed_out``...).
        step_seconds: Timed step times.
        warmup_seconds: Untimed warm-up step times.
        wall_seconds: Wall time of the whole process.
        setup_seconds: Process start to the first warm-up step (imports, data, model build).
        work_per_step: The objective's work per step (voxels for unet3d).
        value: The objective's figure (None unless ``ok``).
    """

    config: int
    repeat: int
    outcome: str
    step_seconds: tuple[float, ...] = ()
    warmup_seconds: tuple[float, ...] = ()
    wall_seconds: float = 0.0
    setup_seconds: float = 0.0
    work_per_step: float = 0.0
    value: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the measurement completed with a figure."""
        return self.outcome == "ok" and self.value is not None

    @property
    def start_seconds(self) -> float:
        """Seconds of the process that are neither warm-up nor timed steps (start, build, exit)."""
        return max(0.0, self.wall_seconds - sum(self.warmup_seconds) - sum(self.step_seconds))

    def to_line(self) -> str:
        """The measurement as one JSON line."""
        data = {
            "kind": "measurement", "config": self.config, "repeat": self.repeat, "outcome": self.outcome,
            "step_seconds": [_round(s) for s in self.step_seconds],
            "warmup_seconds": [_round(s) for s in self.warmup_seconds],
            "wall_seconds": _round(self.wall_seconds), "setup_seconds": _round(self.setup_seconds),
            "work_per_step": self.work_per_step, "value": None if self.value is None else _round(self.value),
        }
        return json.dumps(data, separators=(",", ":"))


@dataclass(frozen=True)
class Stats:
    """One configuration's figures over its repeats."""

    median: float | None
    cv: float | None
    values: tuple[float, ...]


@dataclass
class Landscape:
    """A recorded grid (see the module docstring).

    Attributes:
        header: The file's first line: host, software, space, pins, knobs, the recording's dates.
        knobs: Searched knobs in suggestion order: ``{"name", "kind" (categorical|int), "choices" or
            "low"/"high", "when": {knob: [values]}}``.
        configs: The grid: ``{"id", "params" (active searched knobs), "roles" (baseline,
            vendor_recommended, or none), "config" (every knob)}``.
        measurements: Every measurement, in recording order.
        name: The file's stem.
        sessions: The recorder's ``finished`` lines: when each recording session ended and its wall-clock
            seconds (waits for the host's cores included).
    """

    header: dict[str, Any]
    knobs: list[dict[str, Any]]
    configs: list[dict[str, Any]]
    measurements: list[Measurement] = field(default_factory=list)
    name: str = ""
    sessions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def maximize(self) -> bool:
        """Whether a larger figure is better."""
        return self.header.get("objective", {}).get("direction", "maximize") == "maximize"

    def by_config(self) -> dict[int, list[Measurement]]:
        """Measurements of each configuration, in recording order."""
        table: dict[int, list[Measurement]] = {c["id"]: [] for c in self.configs}
        for m in self.measurements:
            table.setdefault(m.config, []).append(m)
        return table

    def stats(self) -> dict[int, Stats]:
        """Median and between-run CV of each configuration's figure over its completed repeats."""
        result = {}
        for cid, runs in self.by_config().items():
            values = tuple(m.value for m in runs if m.ok)
            median = statistics.median(values) if values else None
            cv = statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else None
            result[cid] = Stats(median, cv, values)
        return result

    def best(self) -> tuple[int, Stats]:
        """The configuration with the best median, and its figures."""
        stats = {cid: s for cid, s in self.stats().items() if s.median is not None}
        pick = max if self.maximize else min
        cid = pick(stats, key=lambda c: stats[c].median)
        return cid, stats[cid]

    def tolerance(self) -> float:
        """Relative distance from the best median that is taken as equal to it (see the module docstring)."""
        _, best = self.best()
        return max(MIN_TOLERANCE, CV_FACTOR * (best.cv or 0.0))

    def targets(self, kind: str = "noise") -> set[int]:
        """Configurations that reach the best: ``noise`` (the noise-aware target) or ``fraction`` (95%)."""
        _, best = self.best()
        assert best.median is not None
        share = 1 - self.tolerance() if kind == "noise" else FRACTION_TARGET
        goal = best.median * share if self.maximize else best.median / share
        return {cid for cid, s in self.stats().items() if s.median is not None
                and (s.median >= goal if self.maximize else s.median <= goal)}

    def recording_seconds(self) -> float:
        """Machine time of the recording: the sum of the measurements' wall times."""
        return sum(m.wall_seconds for m in self.measurements)

    def describe(self) -> str:
        """One line naming the landscape's host, mode and grid."""
        host = self.header.get("host", {})
        mode = self.header.get("mode", "?")
        return (f"{self.name}: {host.get('cpu_model', '?')} ({host.get('logical_cpus', '?')} CPUs), {mode}, "
                f"{len(self.configs)} configurations")


def read_landscape(path: Path) -> Landscape:
    """Read a landscape file; a torn last line (an interrupted write) is ignored."""
    lines = Path(path).read_text().splitlines()
    header = json.loads(lines[0])
    if header.get("kind") != "landscape" or header.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a landscape file of schema {SCHEMA}")
    measurements = []
    sessions = []
    for line in lines[1:]:
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if data.get("kind") == "finished":
            sessions.append(data)
        if data.get("kind") != "measurement":
            continue
        measurements.append(Measurement(
            config=data["config"], repeat=data["repeat"], outcome=data["outcome"],
            step_seconds=tuple(data.get("step_seconds", ())), warmup_seconds=tuple(data.get("warmup_seconds", ())),
            wall_seconds=data.get("wall_seconds", 0.0), setup_seconds=data.get("setup_seconds", 0.0),
            work_per_step=data.get("work_per_step", 0.0), value=data.get("value"),
        ))
    return Landscape(header, header["knobs"], header["configs"], measurements, name=Path(path).stem,
                     sessions=sessions)


def landscape_files(folder: Path) -> list[Path]:
    """The landscape files in ``folder``, by name."""
    return sorted(Path(folder).glob("*.jsonl"))


def write_header(path: Path, header: Mapping[str, Any]) -> None:
    """Start a landscape file with its header line."""
    Path(path).write_text(json.dumps({"kind": "landscape", "schema": SCHEMA, **header}, separators=(",", ":")) + "\n")


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append lines to a landscape file, flushed to disk."""
    with open(path, "a") as handle:
        for line in lines:
            handle.write(line + "\n")
        handle.flush()


def _round(value: float) -> float:
    """Five significant digits: far below the noise, and it keeps files small."""
    return float(f"{value:.5g}")
