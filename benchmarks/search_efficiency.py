"""How fast do the samplers find a good configuration? Prints a Markdown table.

Usage: python benchmarks/search_efficiency.py [--seeds 5] [--storage sqlite:///grid.db]

1. An exhaustive grid over a reduced unet3d space (benchmarks/reduced_unet3d.toml: a small network,
   48 distinct configurations) is measured once with the real workload, through ``autotune run
   --sampler grid`` (every configuration in a fresh process; a stored grid is reused when the storage
   already holds it).
2. The samplers are then replayed against those measurements: each proposed configuration is answered
   with its measured throughput and costs its measured wall time; a configuration already proposed costs
   nothing (autotune answers repeats from storage). For each sampler and seed the table gives the
   configurations measured and the wall time spent until one reached 95% of the grid's best.

Samplers: ``random`` (Optuna's RandomSampler), ``tpe`` (Optuna's TPESampler with its defaults) and
``default`` (what ``autotune run`` uses: multivariate grouped TPE, after the baseline and the
vendor-recommended configuration).
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import replace
from pathlib import Path

import optuna

from autotune.host import probe_host
from autotune.space import REFERENCES, HostFacts, load_space
from autotune.study import RunOptions, enqueue_references, make_sampler, run_study

SPACE = Path(__file__).resolve().parent / "reduced_unet3d.toml"
TARGET = 0.95
STUDY = "search-efficiency-grid"


def measure_grid(storage: str, space, host) -> dict[tuple, tuple[float | None, float]]:
    """Measure (or reuse) the grid; return config key -> (voxels/s or None, wall seconds)."""
    options = RunOptions(trials=10_000, timeout_s=10 * 3600, storage=storage, study_name=STUDY, sampler="grid",
                         prune=False, confirm_repeats=0, report_dir=Path("reports") / STUDY)
    run_study(options, host, space, {})
    study = optuna.load_study(study_name=STUDY, storage=storage)
    table: dict[tuple, tuple[float | None, float]] = {}
    for trial in study.get_trials(deepcopy=False):
        config = trial.user_attrs.get("config")
        if not config or "repeat_of" in trial.user_attrs or not trial.state.is_finished():
            continue
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None
        table[space.fingerprint_config(space.configure(config))] = (value, trial.user_attrs.get("wall_seconds", 0.0))
    return table


def replay(kind: str, seed: int, space, table, goal: float, limit: int) -> tuple[int | None, float]:
    """Configurations measured and seconds spent until ``goal`` was reached (None: not reached)."""
    if kind == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = make_sampler(replace(RunOptions(), seed=seed), space, {})
    study = optuna.create_study(direction="maximize", sampler=sampler)
    if kind == "default":
        enqueue_references(study, space, {})
    seen: set[tuple] = set()
    spent = 0.0
    for _ in range(limit * 20):
        trial = study.ask()
        config = space.suggest(trial, {})
        role = trial.user_attrs.get("role")
        if role in REFERENCES:
            config = space.reference(role, {})
        key = space.fingerprint_config(config)
        value, wall = table[key]
        if key not in seen:
            seen.add(key)
            spent += wall
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
            if value >= goal:
                return len(seen), spent
        if len(seen) >= limit:
            break
    return None, spent


def main() -> None:
    """Measure the grid, replay the samplers, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--storage", default="sqlite:///search-efficiency.db")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    host = probe_host(software=False)
    space = load_space(SPACE, HostFacts.of(host))
    table = measure_grid(args.storage, space, host)
    ok = [v for v, _ in table.values() if v is not None]
    best = max(ok)
    grid_wall = sum(w for _, w in table.values())
    goal = TARGET * best
    print(f"grid: {len(table)} configurations ({len(ok)} ok), best {best / 1e6:.3f} M voxels/s, "
          f"{grid_wall / 60:.1f} min of trials; target {TARGET:.0%} = {goal / 1e6:.3f} M voxels/s")
    print()
    print("| sampler | median trials to 95% | mean | 90th percentile | seeds within a quarter of the grid "
          "| median wall time |")
    print("|---|---|---|---|---|---|")
    quarter = len(table) / 4
    for kind in ("random", "tpe", "default"):
        results = [replay(kind, seed, space, table, goal, len(table)) for seed in range(args.seeds)]
        counts = sorted(n if n is not None else len(table) for n, _ in results)
        p90 = counts[min(len(counts) - 1, math.ceil(0.9 * len(counts)) - 1)]
        within = sum(n <= quarter for n in counts) / len(counts)
        print(f"| {kind} | {statistics.median(counts):g} ({statistics.median(counts) / len(table):.0%}) | "
              f"{statistics.fmean(counts):.1f} | {p90} | {within:.0%} | "
              f"{statistics.median(w for _, w in results):.0f} s |")

if __name__ == "__main__":
    main()
