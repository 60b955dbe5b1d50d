"""The workload contract: what a search space's ``[workload]`` table declares, and what the driver reads.

A workload is whatever the user wants faster: a module that speaks the trial protocol
(:mod:`autotune.protocol`), or any program, started from an argv list. The contract says

* **how a trial starts**: ``module = "workloads.unet3d"`` (run with ``python -m``), or
  ``command = ["python", "predict.py", "--batch={batch}"]``: an argv list, never a shell string; a
  ``{knob}`` placeholder is replaced by the knob's value as text inside that one argument, never split
  and never evaluated. A command runs under the :mod:`workloads.command` wrapper, which speaks the
  protocol for it;
* **how its input is checked** before the first trial: a module's ``--check`` mode (always there), or
  a command's optional ``check`` argv (exit 0: good; anything else: bad input, its last stderr line);
* **its objective**: ``[workload.objective]`` with ``name`` (the figure in the trial's record),
  ``unit`` (``samples/s``, ``images/s``, ``s``) and ``direction`` (``maximize`` for a throughput,
  ``minimize`` for a latency). The pruner, the confirmation stage, the report, ``verify``, ``export``
  and ``exec`` all speak it;
* **extra figures** to show beside it, ``[workload.figures]``: name = unit;
* **its latency**, ``latency = "latency_per_sample_s"``: which figure (one of them, in seconds) is the time
  one unit of work waits, the figure ``run --max-latency`` bounds;
* **labels**: knobs whose values name the default study (``label = ["mode"]``);
* for a command: how its figure is read, ``figure_key`` (a key of a printed ``@autotune {...}`` line)
  or ``figure_pattern`` (a regular expression with one group); with neither, its wall time over repeated
  runs after a warm-up run, as hyperfine measures;
* for a command, optionally a **quality figure**, the guard that a faster configuration still computes
  the same answers: ``quality_key = "accuracy"`` names it and reads it from that key of a printed
  ``@autotune {...}`` line, or, with ``quality_pattern`` (a regular expression with one group), from
  the last match in stdout. Every run must print it, else the trial is bad output; the trial's record
  holds its median over the timed runs under that name, and its lowest and highest as
  ``<name>_min`` and ``<name>_max``.

Knobs reach a trial by their ``target`` (see :data:`autotune.space.TARGETS`); nothing here or in the
driver names a knob of one workload.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import UserError

DIRECTIONS = ("maximize", "minimize")
# The protocol-speaking wrapper that runs a command workload's program.
COMMAND_MODULE = "workloads.command"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORKLOAD_KEYS = {"name", "module", "command", "check", "label", "objective", "figures", "figure_key",
                  "figure_pattern", "quality_key", "quality_pattern", "latency"}


class ContractError(UserError):
    """A ``[workload]`` table that does not make a contract; the message names the key."""


@dataclass(frozen=True)
class Objective:
    """What a trial's figure is and which way is better.

    Attributes:
        name: Key of the figure in a trial's record, e.g. ``samples_per_s``.
        unit: Its unit as users read it, e.g. ``samples/s``.
        direction: ``maximize`` (a throughput) or ``minimize`` (a latency).
    """

    name: str
    unit: str
    direction: str = "maximize"

    @property
    def maximize(self) -> bool:
        """Whether a larger figure is better."""
        return self.direction == "maximize"

    @property
    def label(self) -> str:
        """The figure with its unit, e.g. ``samples_per_s (samples/s)``: Optuna's metric name, axis titles."""
        return f"{self.name} ({self.unit})"

    def value(self, record: Mapping[str, Any] | None) -> float | None:
        """The objective's value in a trial record (None when the trial gave none)."""
        if not record:
            return None
        value = record.get(self.name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def running(self, work_per_step: float, median_step_s: float) -> float:
        """The figure a trial's running median step implies: ``work / step`` up, ``step / work`` down."""
        return work_per_step / median_step_s if self.maximize else median_step_s / work_per_step

    def speedup(self, value: float, reference: float) -> float:
        """How many times better ``value`` is than ``reference`` (above 1: better), either direction."""
        return value / reference if self.maximize else reference / value

    def better(self, value: float, other: float) -> bool:
        """Whether ``value`` is strictly better than ``other``."""
        return value > other if self.maximize else value < other

    def best(self, values: Mapping[str, float]) -> str | None:
        """The key of the best value, or None for none."""
        if not values:
            return None
        return (max if self.maximize else min)(values, key=values.get)


@dataclass(frozen=True)
class Contract:
    """A workload's declared contract (see the module docstring).

    Attributes:
        name: Workload name (plain: letters, digits, ``_``).
        module: Protocol-speaking module started with ``python -m``; :data:`COMMAND_MODULE` for commands.
        objective: The figure tuned and its direction.
        figures: Extra figures to show, name -> unit.
        label: Knobs whose values name the default study.
        command: The program's argv template, for a command workload (may be given on the command line).
        check: A command workload's argv that checks its input, or None.
        figure_key: Key of the figure in a printed ``@autotune`` line, for a command workload.
        figure_pattern: Regular expression with one group that reads the figure from stdout.
        quality_key: Name of a command's quality figure, and the key of the printed ``@autotune`` line
            it is read from unless ``quality_pattern`` is given; None: no quality figure.
        quality_pattern: Regular expression with one group that reads the quality figure from stdout.
        latency: The figure that is a latency in seconds (bounded by ``--max-latency``), or None.
    """

    name: str
    module: str
    objective: Objective
    figures: Mapping[str, str] = field(default_factory=dict)
    label: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None
    check: tuple[str, ...] | None = None
    figure_key: str | None = None
    figure_pattern: str | None = None
    quality_key: str | None = None
    quality_pattern: str | None = None
    latency: str | None = None

    @property
    def is_command(self) -> bool:
        """Whether trials run a program through the command wrapper."""
        return self.module == COMMAND_MODULE

    def placeholders(self) -> set[str]:
        """Knob names used as ``{knob}`` in the command and check argv."""
        found: set[str] = set()
        for arg in (*(self.command or ()), *(self.check or ())):
            found.update(PLACEHOLDER.findall(arg))
        return found


def parse_contract(table: Mapping[str, Any]) -> Contract:
    """Read the ``[workload]`` table of a search space.

    Raises:
        ContractError: A missing or malformed key; the message names it.
    """
    unknown = sorted(set(table) - _WORKLOAD_KEYS)
    if unknown:
        raise ContractError(f"workload: unknown key {unknown[0]!r} (known: {', '.join(sorted(_WORKLOAD_KEYS))})")
    name = table.get("name")
    if not (isinstance(name, str) and name.replace("_", "").isalnum()):
        raise ContractError(f"workload.name: {name!r} is not a plain name (letters, digits, _)")
    module, command = table.get("module"), table.get("command")
    # module = "workloads.command" names the wrapper a command runs under anyway: a copy of the bundled
    # command space may keep it beside its own command.
    if module is not None and command is not None and module != COMMAND_MODULE:
        raise ContractError("workload: give either module or command, not both")
    if command is not None:
        module = COMMAND_MODULE
        command = argv(command, "workload.command")
    elif module is None:
        raise ContractError("workload.module: missing; say how a trial starts: module = \"pkg.mod\" "
                            "or command = [\"prog\", ...]")
    if not (isinstance(module, str) and all(p.isidentifier() for p in module.split("."))):
        raise ContractError(f"workload.module: {module!r} is not a dotted Python module name")
    check = table.get("check")
    if check is not None:
        if module != COMMAND_MODULE:
            raise ContractError("workload.check: only a command workload names a check command "
                                "(a module is checked with its --check mode)")
        check = argv(check, "workload.check")
    figure_key, pattern = table.get("figure_key"), table.get("figure_pattern")
    if (figure_key is not None or pattern is not None) and module != COMMAND_MODULE:
        raise ContractError("workload.figure_key/figure_pattern: only for a command workload")
    if figure_key is not None and not (isinstance(figure_key, str) and figure_key):
        raise ContractError(f"workload.figure_key: {figure_key!r} is not a key name")
    if pattern is not None:
        _pattern(pattern, "workload.figure_pattern")
    quality_key, quality_pattern = table.get("quality_key"), table.get("quality_pattern")
    if (quality_key is not None or quality_pattern is not None) and module != COMMAND_MODULE:
        raise ContractError("workload.quality_key/quality_pattern: only for a command workload (a module "
                            "sends its check outputs itself)")
    if quality_pattern is not None and quality_key is None:
        raise ContractError("workload.quality_pattern: name the figure it reads with quality_key = \"accuracy\"")
    if quality_key is not None and not (isinstance(quality_key, str) and quality_key.isidentifier()):
        raise ContractError(f"workload.quality_key: {quality_key!r} is not a figure name")
    if quality_pattern is not None:
        _pattern(quality_pattern, "workload.quality_pattern")
    objective = _objective(table.get("objective"))
    if quality_key is not None and quality_key == objective.name:
        raise ContractError(f"workload.quality_key: {quality_key!r} is the objective; the quality figure is "
                            "another figure the program prints (e.g. its accuracy)")
    figures = _figures(table.get("figures", {}))
    latency = table.get("latency")
    if latency is not None and latency not in figures:
        raise ContractError(f"workload.latency: {latency!r} is not one of the figures ([workload.figures])")
    return Contract(
        name=name,
        module=module,
        objective=objective,
        figures=figures,
        label=_label(table.get("label", [])),
        command=command,
        check=check,
        figure_key=figure_key,
        figure_pattern=pattern,
        quality_key=quality_key,
        quality_pattern=quality_pattern,
        latency=latency,
    )


def argv(value: Any, where: str) -> tuple[str, ...]:
    """An argv list of non-empty strings (a string is refused: it would need a shell to split it).

    Raises:
        ContractError: Not such a list.
    """
    if isinstance(value, str):
        raise ContractError(f"{where}: {value!r} is a string; give an argv list such as [\"python\", \"run.py\"] "
                            "(no shell splits it)")
    if not (isinstance(value, list | tuple) and value and all(isinstance(a, str) and a for a in value)):
        raise ContractError(f"{where}: must be a non-empty list of non-empty strings")
    if any("\0" in a for a in value):
        raise ContractError(f"{where}: an argument cannot hold a NUL character")
    return tuple(value)


def _objective(table: Any) -> Objective:
    if not isinstance(table, dict):
        raise ContractError("workload.objective: missing; declare name, unit and direction "
                            "(e.g. { name = \"samples_per_s\", unit = \"samples/s\", direction = \"maximize\" })")
    unknown = sorted(set(table) - {"name", "unit", "direction"})
    if unknown:
        raise ContractError(f"workload.objective: unknown key {unknown[0]!r}")
    name, unit, direction = table.get("name"), table.get("unit"), table.get("direction", "maximize")
    if not (isinstance(name, str) and name.isidentifier()):
        raise ContractError(f"workload.objective.name: {name!r} is not a figure name")
    _unit(unit, "workload.objective.unit")
    if direction not in DIRECTIONS:
        raise ContractError(f"workload.objective.direction: {direction!r} is not one of {', '.join(DIRECTIONS)}")
    return Objective(name=name, unit=unit, direction=direction)


def _figures(table: Any) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ContractError("workload.figures: must be a table of name = unit")
    for name, unit in table.items():
        if not name.isidentifier():
            raise ContractError(f"workload.figures.{name}: not a figure name")
        _unit(unit, f"workload.figures.{name}")
    return dict(table)


def _label(value: Any) -> tuple[str, ...]:
    if not (isinstance(value, list) and all(isinstance(v, str) and v.isidentifier() for v in value)):
        raise ContractError("workload.label: must be a list of knob names")
    return tuple(value)


def _unit(unit: Any, where: str) -> None:
    if not (isinstance(unit, str) and unit.strip() and unit.isprintable() and len(unit) <= 40):
        raise ContractError(f"{where}: {unit!r} is not a short unit such as \"samples/s\"")


def _pattern(pattern: Any, where: str) -> None:
    if not isinstance(pattern, str):
        raise ContractError(f"{where}: must be a string")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ContractError(f"{where}: not a regular expression ({exc})") from None
    if compiled.groups != 1:
        raise ContractError(f"{where}: needs exactly one group, the number")
