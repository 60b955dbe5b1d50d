"""The trial protocol shared by the driver and every workload.

A trial is one child process. The driver writes a :class:`TrialConfig` as JSON to a file and starts
``python -m workloads.<name> --config FILE``; environment knobs and CPU affinity are already applied to
that process. The child prints protocol messages on stdout, one per line, each a JSON object behind
:data:`LINE_PREFIX`:

* ``{"kind": "setup", "work_per_step": w, ...}`` once, after data and model are ready (how long it took,
  and the work one step does in the objective's unit, so the driver can judge a running figure);
* ``{"kind": "plan", "steps": n}`` when the child has decided how many timed steps it will run;
* ``{"kind": "step", "index": i, "seconds": t, "warmup": bool}`` after every step, as it completes; a
  step may carry ``"figure"``: its own value of the objective, when that is not ``work / seconds``
  (a program that prints its own figure); a timed step carries ``"start"`` and ``"end"``, its wall-clock
  times (Unix seconds), so the driver can find the window in which several instances all measured;
* ``{"kind": "ready"}`` after the warm-up, when the driver gave a barrier (:data:`BARRIER_VARIABLE`: one of
  several instances); the child then waits for the driver's go (one byte on that descriptor) before it
  times its first step, so that all instances measure together;
* ``{"kind": "result", ...}`` last, the :class:`TrialResult` record;
* ``{"kind": "error", "message": ...}`` instead of a result when the trial's input is bad;
* ``{"kind": "bad_output", "message": ...}`` instead of a result when what the trial measured is unusable
  (a program that printed no quality figure): the trial ends as ``bad_output`` with that reason.

With ``TrialConfig.outputs`` set, a model workload computes, after its timed steps, its outputs for fixed
check inputs and fixed check weights with the model and shapes it was timed with, and puts them in the
result's ``outputs`` (:mod:`autotune.outputs`); the driver compares them with a reference configuration's.

Started with ``--prepare``, the child makes what its checks need and can be cached (a workload's check
weights, trained once), then prints ``{"kind": "prepared", ...}`` (what it made, how long it took) and
exits 0, or an ``error`` message and exits 2.

Started with ``--check`` as well, the child measures nothing: it validates the config's values and the
inputs they name (a data folder, a model file), then prints ``{"kind": "checked", ...}`` (what it
found) and exits 0, or an ``error`` message and exits 2. The driver runs this once for the reference
configurations before a study stores any trial, so bad input is one line and exit status 2.

Anything else on stdout is ignored, so libraries that print do not break the protocol. This module
imports nothing heavy: the driver and the workloads both use it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 2
LINE_PREFIX = "@autotune "
# The file descriptor number of the barrier pipe an instance reads its go from (see the module docstring).
BARRIER_VARIABLE = "AUTOTUNE_BARRIER_FD"


class ProtocolError(ValueError):
    """A protocol message or record that cannot be read."""


class Outcome(StrEnum):
    """How a trial ended, as the driver records it."""

    OK = "ok"
    PRUNED = "pruned"
    CRASHED = "crashed"
    TIMED_OUT = "timed_out"
    OUT_OF_MEMORY = "out_of_memory"
    BAD_OUTPUT = "bad_output"
    BAD_INPUT = "bad_input"
    INTERRUPTED = "interrupted"
    # Measured, but its outputs disagree with the reference beyond the tolerance: never a winner.
    INACCURATE = "inaccurate"

    @property
    def is_failure(self) -> bool:
        """Whether the trial produced no usable figure."""
        return self not in (Outcome.OK, Outcome.PRUNED, Outcome.INACCURATE)


@dataclass(frozen=True)
class TrialConfig:
    """What the child receives: the workload name and its in-process knobs.

    Attributes:
        workload: Workload name, e.g. ``"unet3d"``.
        params: In-process knobs by their canonical names (``mode``, ``batch``, ``patch``,
            ``data_format``, ``intra_threads``, ``warmup``, ``steps``, ...).
        timed_steps: When set, the driver's order: run exactly this many timed steps, whatever the
            workload's own step knobs say (the confirmation stage's shorter runs). The harness obeys it.
        outputs: The driver's order to compute the check outputs after the timed steps and send them in
            the result (:mod:`autotune.outputs`); a workload that cannot sends none.
        schema: Protocol schema version.
    """

    workload: str
    params: dict[str, Any]
    timed_steps: int | None = None
    outputs: bool = False
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        """Serialize to JSON text."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialConfig:
        """Parse JSON text written by :meth:`to_json`.

        Raises:
            ProtocolError: The text is not a config of this schema.
        """
        data = _loads_object(text, "trial config")
        _check_schema(data, "trial config")
        if not isinstance(data.get("workload"), str) or not isinstance(data.get("params"), dict):
            raise ProtocolError("trial config needs a 'workload' string and a 'params' object")
        steps = data.get("timed_steps")
        if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
            raise ProtocolError("trial config's 'timed_steps' must be a positive integer")
        outputs = data.get("outputs", False)
        if not isinstance(outputs, bool):
            raise ProtocolError("trial config's 'outputs' must be true or false")
        return cls(workload=data["workload"], params=data["params"], timed_steps=steps, outputs=outputs,
                   schema=data["schema"])


@dataclass(frozen=True)
class TrialResult:
    """The final record of one successful trial, as the workload reports it.

    Times are seconds. Figures use the median timed step. Nothing here is specific to one workload:
    the workload's own figures (its objective, as its search space declares it, and any extras) are in
    :attr:`figures`, by name.

    Attributes:
        workload: Workload name.
        params: The in-process knobs the trial ran with (after defaults were filled in).
        warmup_seconds: Untimed warm-up step times.
        step_seconds: Timed step times, in order.
        median_step_s: Median of ``step_seconds``.
        mad_step_s: Median absolute deviation of ``step_seconds``.
        cv: Coefficient of variation (stdev / mean) of ``step_seconds``.
        work_per_step: Units of the objective's work done per step (samples, images, runs), so that a
            throughput is ``work_per_step / median_step_s`` and a latency ``median_step_s / work_per_step``.
        figures: Named figures of the trial, e.g. ``{"samples_per_s": 41.2, "latency_per_sample_s":
            0.024, "gflops_per_s": 180.5}``; the objective is one of them.
        peak_rss_mb: Peak resident set size of the trial process, MiB.
        setup_seconds: Time from process start to the first warm-up step (import, data, build).
        effective: What the process observed: threads, affinity, oneDNN state, versions, layout.
        outputs: The check outputs (:mod:`autotune.outputs` payload) when the config asked for them.
        schema: Protocol schema version.
    """

    workload: str
    params: dict[str, Any]
    warmup_seconds: list[float]
    step_seconds: list[float]
    median_step_s: float
    mad_step_s: float
    cv: float
    work_per_step: float
    figures: dict[str, float]
    peak_rss_mb: float
    setup_seconds: float
    effective: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        """Build a record from :meth:`to_dict` output.

        Unknown fields are ignored: a newer workload's extra fields do not break an older driver.

        Raises:
            ProtocolError: Fields are missing, of the wrong type or of the wrong schema.
        """
        if not isinstance(data, dict):
            raise ProtocolError("trial result is not a JSON object")
        _check_schema(data, "trial result")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in data and n not in ("effective", "outputs", "schema"))
        if missing:
            raise ProtocolError(f"trial result is missing {', '.join(missing)}")
        try:
            record = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise ProtocolError(f"trial result is malformed: {exc}") from None
        steps = record.step_seconds
        if not isinstance(steps, list | tuple) or not steps or not all(
            _is_number(t) and t > 0 for t in steps
        ):
            raise ProtocolError("trial result has no positive step times")
        wrong = [f.name for f in fields(cls) if not _field_ok(f.name, getattr(record, f.name))]
        if wrong:
            raise ProtocolError(f"trial result has fields of the wrong type: {', '.join(wrong)}")
        return record


def _field_ok(name: str, value: Any) -> bool:
    if name == "workload":
        return isinstance(value, str)
    if name == "figures":
        return isinstance(value, dict) and all(isinstance(k, str) and _is_number(v) for k, v in value.items())
    if name in ("params", "effective", "outputs"):
        return isinstance(value, dict)
    if name in ("warmup_seconds", "step_seconds"):
        return isinstance(value, list | tuple) and all(_is_number(t) for t in value)
    return _is_number(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def encode_message(kind: str, **payload: Any) -> str:
    """Return one protocol line (without newline) for a message of ``kind``."""
    return LINE_PREFIX + json.dumps({"kind": kind, **payload}, sort_keys=True)


def decode_line(line: str) -> dict[str, Any] | None:
    """Decode one stdout line.

    Returns:
        The message object, or None when the line is not a protocol line.

    Raises:
        ProtocolError: The line carries the prefix but not a JSON object with a ``kind``.
    """
    if not line.startswith(LINE_PREFIX):
        return None
    data = _loads_object(line[len(LINE_PREFIX) :], "protocol line")
    if not isinstance(data.get("kind"), str):
        raise ProtocolError("protocol line has no 'kind'")
    return data


def _loads_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return data


def _check_schema(data: dict[str, Any], what: str) -> None:
    if data.get("schema") != SCHEMA_VERSION:
        raise ProtocolError(
            f"{what} has schema {data.get('schema')!r}, this autotune reads {SCHEMA_VERSION}"
        )
