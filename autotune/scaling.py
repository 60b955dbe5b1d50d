"""The scaling curve: throughput of a study's best configuration against the physical cores it uses.

Where adding cores stops paying is the first question a capacity planner asks. :func:`measure_curve`
runs the stored best on 1, 2, 4, ... cores (and the host's count when it is not a power of two), twice per
count where it can: as one instance pinned to those cores, and as instances of the best's cores per
instance (one core each when the best is one process) filling them. Each point is one fresh measurement,
so this is its own command (``autotune scale``), not part of ``run``. The points are stored in the study's
user attribute :data:`autotune.layout_report.SCALING_ATTR` after each one; the report draws them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna

from autotune.errors import UserError
from autotune.layout_report import SCALING_ATTR
from autotune.measurer import Measurer
from autotune.protocol import Outcome
from autotune.space import SearchSpace
from autotune.summary import summarize_study


def core_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores``, and ``cores`` itself."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return [*counts, cores]


def point_configs(space: SearchSpace, best: Mapping[str, Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """``(cores, layout in words, configuration)`` of every point of the curve of ``best``.

    Raises:
        UserError: The space has neither an instances knob nor pinning to a number of cores.
    """
    count, per_knob = space.target_knob("instances"), space.target_knob("instance_cores")
    affinity, pinned = space.target_knob("affinity"), space.target_knob("cores")
    if not (count or (affinity and pinned)):
        raise UserError(f"workload {space.workload!r} has no knob that sets its cores (targets affinity and cores, "
                        "or instances): no scaling curve")
    cores = int(space.facts.counts["physical_cores"]) if space.facts else 1
    per = space.instances(best)[1] or 1
    points = []
    for k in core_counts(cores):
        if affinity and pinned:
            values = {affinity: "cores", pinned: k, **({count: 1} if count else {})}
            points.append((k, f"1 x {k} cores", _fitted(space, best, values, k)))
        if count and per_knob and k % per == 0 and k // per >= 2:
            values = {count: k // per, per_knob: per}
            points.append((k, f"{k // per} x {per} cores", _fitted(space, best, values, per)))
    return points


def _fitted(space: SearchSpace, best: Mapping[str, Any], values: Mapping[str, Any], per: int) -> dict[str, Any]:
    """``best`` with ``values``, its thread knobs lowered to the cores of one instance where above them."""
    config = {**best, **values}
    for name, knob in space.knobs.items():
        if knob.threads and int(config[name]) > per:
            config[name] = per
    return space.configure(config)


def measure_curve(
    study: optuna.Study, measurer: Measurer, on_point: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Measure the scaling curve of the study's best and store it in the study; return it.

    Raises:
        UserError: The study has no best configuration, or its space cannot set cores.
    """
    space = measurer.space
    best = summarize_study(study, space, measurer.host).best
    if best is None:
        raise UserError(f"study {study.study_name!r} has no successful trial to scale")
    curve: dict[str, Any] = {"trial": best["trial"], "host_fingerprint": measurer.host.fingerprint, "points": []}
    plan = point_configs(space, space.configure(best["config"]))
    with measurer.holding(f"scaling curve of study {study.study_name}"):
        for cores, layout, config in plan:
            _, outcome = measurer.run(config)
            result = outcome.result
            value = result.figures.get(space.objective.name) if result is not None else None
            point = {"cores": cores, "layout": layout, "value": value,
                     "outcome": outcome.outcome.value if outcome.outcome is not Outcome.OK else "ok",
                     "reason": outcome.reason}
            curve["points"].append(point)
            study.set_user_attr(SCALING_ATTR, curve)
            if on_point is not None:
                on_point(point)
    return curve
