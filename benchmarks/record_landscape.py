"""Record a landscape: measure every configuration of a grid several times, in fresh processes, interleaved.

Usage:
    python benchmarks/record_landscape.py --space benchmarks/reduced_unet3d.toml --repeats 3 \\
        --out benchmarks/landscapes/NAME.jsonl [--set KNOB=VALUE ...] [--knob NAME[=V1,V2] ...]

The grid is the product of the searched knobs (``--knob`` names which and, optionally, their values; by
default every knob the space searches), inactive knobs collapsed, plus the baseline and the
vendor-recommended configuration. Round r of every configuration runs before round r+1, so the load of
other work on the host spreads over all configurations. Pruning is off: every step time is known, and
the replay (:mod:`autotune.replay`) decides where the real pruner would have stopped. Each measurement is
appended to the file as it ends; run the same command again to resume (the header must match).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from autotune.host import probe_host
from autotune.landscape import Measurement, append_lines, read_landscape, write_header
from autotune.measurer import Measurer
from autotune.record import trial_record
from autotune.space import REFERENCES, HostFacts, SearchSpace, load_space


def grid_knobs(space: SearchSpace, pins: dict[str, Any], chosen: list[str]) -> list[dict[str, Any]]:
    """The varied knobs in suggestion order, with their values and the conditions on other varied knobs."""
    wanted: dict[str, list[Any] | None] = {}
    for item in chosen:
        name, _, values = item.partition("=")
        knob = space.knob(name)
        wanted[name] = [knob.parse(v) for v in values.split(",")] if values else None
    names = list(wanted) if wanted else space.searched(pins)
    knobs = []
    for name in space.searched(pins):
        if name not in names:
            continue
        knob = space.knobs[name]
        values = wanted.get(name)
        if values is None:
            if knob.type == "bool":
                values = [False, True]
            elif knob.choices is not None:
                values = list(knob.choices)
            else:
                values = list(range(int(knob.low), int(knob.high) + 1))
        when = {other: list(v) for other, v in knob.when.items() if other in names}
        entry: dict[str, Any] = {"name": name, "when": when}
        if knob.type == "int" and values == list(range(min(values), max(values) + 1)):
            entry.update(kind="int", low=min(values), high=max(values))
        else:
            entry.update(kind="categorical", choices=values)
        knobs.append(entry)
    return knobs


def knob_values(knob: dict[str, Any]) -> list[Any]:
    """Every value a grid knob takes."""
    return list(knob["choices"]) if knob["kind"] == "categorical" else list(range(knob["low"], knob["high"] + 1))


def grid_configs(space: SearchSpace, pins: dict[str, Any], knobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid's distinct configurations, then the references (a reference inside the grid is marked there)."""
    configs: list[dict[str, Any]] = []
    seen: dict[tuple, int] = {}
    for combo in itertools.product(*(knob_values(k) for k in knobs)):
        params: dict[str, Any] = {}
        for knob, value in zip(knobs, combo, strict=True):
            if all(params.get(other) in values for other, values in knob["when"].items()):
                params[knob["name"]] = value
        config = space.configure({**pins, **params})
        key = space.fingerprint_config(config)
        if key not in seen:
            seen[key] = len(configs)
            configs.append({"id": len(configs), "params": params, "roles": [], "config": config})
    for role in REFERENCES:
        config = space.reference(role, pins)
        key = space.fingerprint_config(config)
        if key not in seen:
            params = {k["name"]: config[k["name"]] for k in knobs
                      if all(config.get(o) in v for o, v in k["when"].items())}
            seen[key] = len(configs)
            configs.append({"id": len(configs), "params": params, "roles": [], "config": config})
        configs[seen[key]]["roles"].append(role)
    return configs


def main() -> None:
    """Record (or resume) a landscape."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", help="pin a knob")
    parser.add_argument("--knob", action="append", default=[], metavar="NAME[=V1,V2]", help="vary this knob")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one measurement may take")
    args = parser.parse_args()
    host = probe_host()
    space = load_space(args.space, HostFacts.of(host))
    pins = space.parse_assignments(args.set)
    knobs = grid_knobs(space, pins, args.knob)
    configs = grid_configs(space, pins, knobs)
    header = {
        "host": host.to_dict(), "space": str(args.space), "pins": {k: str(v) for k, v in pins.items()},
        "mode": str({**{n: k.default for n, k in space.knobs.items()}, **pins}.get("mode", "")),
        "objective": {"name": space.objective.name, "unit": space.objective.unit,
                      "direction": space.objective.direction},
        "knobs": knobs, "configs": configs, "repeats": args.repeats, "python": sys.version.split()[0],
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    done: set[tuple[int, int]] = set()
    if args.out.exists():
        old = read_landscape(args.out)
        if json.dumps(old.configs, sort_keys=True) != json.dumps(json.loads(json.dumps(configs)), sort_keys=True):
            sys.exit(f"{args.out}: recorded with another grid; choose another --out")
        done = {(m.config, m.repeat) for m in old.measurements}
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_header(args.out, header)
    measurer = Measurer(space, host, timeout_s=args.timeout)
    total = len(configs) * args.repeats
    start = time.monotonic()
    for repeat in range(args.repeats):
        for entry in configs:
            if (entry["id"], repeat) in done:
                continue
            spec, outcome = measurer.measure(entry["config"], note=f"record_landscape {args.out.name}")
            record = trial_record(entry["config"], spec, outcome, host)
            value = space.objective.value(record) if outcome.outcome.value == "ok" else None
            m = Measurement(
                config=entry["id"], repeat=repeat, outcome=outcome.outcome.value,
                step_seconds=tuple(record["step_seconds"]), warmup_seconds=tuple(record["warmup_seconds"]),
                wall_seconds=outcome.wall_seconds, setup_seconds=record.get("setup_seconds") or 0.0,
                work_per_step=float(record.get("work_per_step") or 0.0), value=value,
            )
            append_lines(args.out, [m.to_line()])
            done.add((entry["id"], repeat))
            shown = f"{value:.4g}" if value is not None else outcome.reason[:80]
            print(f"[{len(done)}/{total} {time.monotonic() - start:.0f}s] config {entry['id']} repeat {repeat}: "
                  f"{outcome.outcome.value} {shown} ({outcome.wall_seconds:.1f}s)", flush=True)
    append_lines(args.out, [json.dumps({"kind": "finished", "at": datetime.datetime.now(datetime.UTC).isoformat(
        timespec="seconds"), "session_seconds": round(time.monotonic() - start, 1)})])


if __name__ == "__main__":
    main()
