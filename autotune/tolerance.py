"""How close a configuration's answers must stay: the ``[agreement]`` table of a search space.

A search space may declare, beside its knobs::

    [agreement]
    shape = ["mode", "batch", "patch"]           # knobs the reference takes from the trial it checks
    reference = { precision = "float32", xla = false }   # the exact configuration compared with

    [[agreement.tolerance]]                       # bounds for every trial ...
    rel_l2_error = { max = 1e-4 }
    [[agreement.tolerance]]                       # ... and, later rules winning, for some
    when = { precision = ["mixed_bfloat16"] }
    dice = { min = 0.99 }

With a ``reference``, every completed search trial sends its outputs for fixed check inputs and weights
(:mod:`autotune.outputs`); the driver compares them with the reference configuration's at the same shape
and bounds the agreement figures. Without one, the bounds apply to the trial's own figures (a command's
printed quality figure). A configuration outside a bound is ``inaccurate`` and never wins.

The reference configuration of a trial is the knobs' defaults, then the study's pins, then the trial's
values of the ``shape`` knobs, then ``reference``: so a pinned ``precision`` never makes the reference
inexact, and the reference is computed once per shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import UserError

OPS = {"max": "<=", "min": ">="}


class ToleranceError(UserError):
    """An ``[agreement]`` table or a ``--tolerance`` value that cannot be read; the message names it."""


@dataclass(frozen=True)
class Bound:
    """One figure's bound: ``max`` (at most ``value``) or ``min`` (at least ``value``)."""

    figure: str
    op: str
    value: float

    def holds(self, figure: float) -> bool:
        """Whether ``figure`` is within the bound (NaN never is)."""
        if math.isnan(figure):
            return False
        return figure <= self.value if self.op == "max" else figure >= self.value

    def describe(self) -> str:
        """The bound as people read it, e.g. ``dice >= 0.99``."""
        return f"{self.figure} {OPS[self.op]} {self.value:g}"


@dataclass(frozen=True)
class ToleranceRule:
    """Bounds that apply when every ``when`` knob has one of its listed values (no ``when``: always)."""

    bounds: Mapping[str, Bound]
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def applies(self, config: Mapping[str, Any]) -> bool:
        """Whether the rule applies to ``config``."""
        return all(config.get(knob) in values for knob, values in self.when.items())


@dataclass(frozen=True)
class Verdict:
    """How a trial's answers compare with the bounds in force.

    Attributes:
        figures: The agreement figures (or the trial's own figures the bounds name).
        bounds: The bounds in force for the trial, by figure.
        failed: One line per bound that does not hold, e.g. ``dice 0.973 < 0.99``.
        unjudged: Bounded figures the trial did not have (labels with random weights).
        note: Why the trial could not be judged at all (the reference failed), else empty.
        weights: What the check weights were, as the workload described them.
    """

    figures: Mapping[str, float]
    bounds: Mapping[str, Bound]
    failed: tuple[str, ...] = ()
    unjudged: tuple[str, ...] = ()
    note: str = ""
    weights: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the trial may win: judged, and inside every bound."""
        return not self.failed and not self.note

    @property
    def reason(self) -> str:
        """One line saying why the trial is inaccurate (empty when it is not)."""
        if self.note:
            return f"outputs not judged: {self.note}"
        return "outputs disagree with the reference: " + "; ".join(self.failed) if self.failed else ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in the trial's record under ``agreement``."""
        return {
            "figures": {k: _finite(v) for k, v in self.figures.items()},
            "bounds": {k: b.describe() for k, b in self.bounds.items()},
            "failed": list(self.failed),
            "unjudged": list(self.unjudged),
            "note": self.note,
            "weights": dict(self.weights),
            "ok": self.ok,
        }


@dataclass(frozen=True)
class AgreementSpec:
    """A search space's ``[agreement]`` table (see the module docstring).

    Attributes:
        reference: Knob values of the exact configuration compared with; None when the bounds apply to
            the trial's own figures.
        shape: Knobs the reference takes from the trial it checks.
        rules: Tolerance rules, in order; a later rule's bound replaces an earlier one's.
        overrides: The user's ``--tolerance`` items behind the last rules, as given (they name the study).
    """

    reference: Mapping[str, Any] | None
    shape: tuple[str, ...] = ()
    rules: tuple[ToleranceRule, ...] = ()
    overrides: tuple[str, ...] = ()

    def bounds_for(self, config: Mapping[str, Any]) -> dict[str, Bound]:
        """The bounds in force for ``config``."""
        bounds: dict[str, Bound] = {}
        for rule in self.rules:
            if rule.applies(config):
                bounds.update(rule.bounds)
        return bounds

    def figures(self) -> list[str]:
        """Every figure some rule bounds, in order of first appearance."""
        seen: dict[str, None] = {}
        for rule in self.rules:
            seen.update(dict.fromkeys(rule.bounds))
        return list(seen)

    def with_overrides(self, items: Sequence[str], knobs: Mapping[str, Any]) -> AgreementSpec:
        """This spec with the user's ``--tolerance`` items as rules after its own, so they win.

        Raises:
            ToleranceError: An item that cannot be read (see :func:`parse_overrides`).
        """
        rules = parse_overrides(items, self, knobs)
        return AgreementSpec(self.reference, self.shape, (*self.rules, *rules), (*self.overrides, *items))

    def judge(
        self, config: Mapping[str, Any], figures: Mapping[str, float], weights: Mapping[str, str] | None = None
    ) -> Verdict:
        """Judge a trial's figures against the bounds in force for its configuration."""
        bounds = self.bounds_for(config)
        failed, unjudged = [], []
        for name, bound in bounds.items():
            value = figures.get(name)
            if self.reference is None:  # a program's own figure: its worst timed run, where it printed several
                value = figures.get(f"{name}_{bound.op}", value)
            if value is None:
                unjudged.append(name)
            elif not bound.holds(float(value)):
                sign = ">" if bound.op == "max" else "<"
                failed.append(f"{name} {float(value):.4g} {sign} {bound.value:g}")
        shown = {k: float(v) for k, v in figures.items() if k in bounds or self.reference is not None}
        return Verdict(shown, bounds, tuple(failed), tuple(unjudged), weights=dict(weights or {}))

    def not_judged(self, config: Mapping[str, Any], note: str, weights: Mapping[str, str] | None = None) -> Verdict:
        """The verdict of a trial whose answers could not be compared (why in ``note``)."""
        return Verdict({}, self.bounds_for(config), note=note, weights=dict(weights or {}))


def parse_agreement(table: Any, knobs: Mapping[str, Any]) -> AgreementSpec:
    """Read a search space's ``[agreement]`` table; ``knobs`` are the space's knobs by name.

    Raises:
        ToleranceError: A malformed key; the message names it.
    """
    if not isinstance(table, dict):
        raise ToleranceError("[agreement]: must be a table")
    unknown = sorted(set(table) - {"reference", "shape", "tolerance"})
    if unknown:
        raise ToleranceError(f"agreement: unknown key {unknown[0]!r} (known: reference, shape, tolerance)")
    reference = table.get("reference")
    if reference is not None:
        if not isinstance(reference, dict) or not reference:
            raise ToleranceError("agreement.reference: must be a table of knob = value")
        reference = {name: _knob_value(knobs, name, value, "agreement.reference") for name, value in reference.items()}
    shape = table.get("shape", [])
    if not (isinstance(shape, list) and all(isinstance(n, str) for n in shape)):
        raise ToleranceError("agreement.shape: must be a list of knob names")
    for name in shape:
        if name not in knobs:
            raise ToleranceError(f"agreement.shape: {name!r} is not a knob")
    if shape and reference is None:
        raise ToleranceError("agreement.shape: only means something with a reference")
    rules = table.get("tolerance", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise ToleranceError("agreement.tolerance: must be an array of tables ([[agreement.tolerance]])")
    parsed = tuple(_rule(rule, knobs, f"agreement.tolerance[{i}]") for i, rule in enumerate(rules))
    if reference is None and not parsed:
        raise ToleranceError("[agreement]: needs a reference or at least one tolerance")
    return AgreementSpec(reference, tuple(shape), parsed)


def parse_overrides(
    items: Iterable[str], spec: AgreementSpec | None, knobs: Mapping[str, Any]
) -> list[ToleranceRule]:
    """Read ``--tolerance [KNOB=VALUE:]FIGURE=BOUND`` items into rules that go after the space's own.

    The bound keeps the direction the space gives the figure (``max`` for an error, ``min`` for an
    overlap); ``KNOB=VALUE:`` limits it to configurations with that value.

    Raises:
        ToleranceError: A malformed item, a figure no rule bounds, or a workload without an agreement check.
    """
    rules = []
    for item in items:
        if spec is None:
            raise ToleranceError(f"--tolerance {item!r}: this workload declares no agreement check")
        condition, _, assignment = item.rpartition(":")
        figure, sep, text = assignment.partition("=")
        figure = figure.strip()
        if not sep or not figure:
            raise ToleranceError(f"--tolerance {item!r}: expected FIGURE=BOUND or KNOB=VALUE:FIGURE=BOUND")
        ops = {rule.bounds[figure].op for rule in spec.rules if figure in rule.bounds}
        if not ops:
            raise ToleranceError(f"--tolerance {item!r}: no bound on {figure!r}; bounded figures: "
                                 f"{', '.join(spec.figures()) or 'none'}")
        try:
            value = float(text)
        except ValueError:
            raise ToleranceError(f"--tolerance {item!r}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise ToleranceError(f"--tolerance {item!r}: the bound must be a finite number")
        when = {}
        if condition:
            knob, sep, knob_text = condition.partition("=")
            knob = knob.strip()
            if not sep or knob not in knobs:
                raise ToleranceError(f"--tolerance {item!r}: {condition!r} is not KNOB=VALUE of a knob")
            when[knob] = (knobs[knob].parse(knob_text),)
        rules.append(ToleranceRule({figure: Bound(figure, ops.pop(), value)}, when))
    return rules


def _rule(table: dict[str, Any], knobs: Mapping[str, Any], where: str) -> ToleranceRule:
    when_table = table.get("when", {})
    if not isinstance(when_table, dict):
        raise ToleranceError(f"{where}.when: must map knobs to lists of values")
    when = {}
    for knob, values in when_table.items():
        if not isinstance(values, list) or not values:
            raise ToleranceError(f"{where}.when.{knob}: must be a non-empty list")
        when[knob] = tuple(v if knob in knobs and str(v) in getattr(knobs[knob], "dropped", ()) else
                           _knob_value(knobs, knob, v, f"{where}.when") for v in values)  # a choice this host lacks
    bounds = {}
    for figure, spec in table.items():
        if figure == "when":
            continue
        if not figure.isidentifier():
            raise ToleranceError(f"{where}.{figure}: not a figure name")
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in OPS):
            raise ToleranceError(f"{where}.{figure}: give {{ max = X }} or {{ min = X }}")
        op, value = next(iter(spec.items()))
        if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)):
            raise ToleranceError(f"{where}.{figure}.{op}: {value!r} is not a finite number")
        bounds[figure] = Bound(figure, op, float(value))
    if not bounds:
        raise ToleranceError(f"{where}: bounds no figure")
    return ToleranceRule(bounds, when)


def _knob_value(knobs: Mapping[str, Any], name: str, value: Any, where: str) -> Any:
    if name not in knobs:
        raise ToleranceError(f"{where}: {name!r} is not a knob")
    try:
        return knobs[name].validate(value)
    except UserError as exc:
        raise ToleranceError(f"{where}.{exc}") from None


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)
