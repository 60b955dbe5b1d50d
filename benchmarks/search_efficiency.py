"""How fast do the samplers find the best configuration, on every recorded landscape? Prints Markdown tables.

Usage:
    python benchmarks/search_efficiency.py [--seeds 20] [--samplers random,default,...] [--no-prune]
    python benchmarks/search_efficiency.py --record OUT.jsonl [--space benchmarks/reduced_unet3d.toml]

1. The landscapes are the files in ``benchmarks/landscapes/`` (``benchmarks/record_landscape.py``: every
   grid configuration measured at least 3 times in fresh processes, interleaved, pruning off). ``--record``
   measures a new one on this host first (with the reduced space unless ``--space`` names another).
2. Each sampler is replayed over ``--seeds`` seeds on each landscape (:mod:`autotune.replay`): a trial
   costs its recorded start-up, warm-up and steps, is pruned where autotune's pruner would prune it, a
   repeat costs nothing, and each measurement draws one of the recorded repeats.
3. For each sampler the table gives the configurations measured and the trial time spent until one that
   reaches the best was measured, by two targets: ``noise`` (median within max(3%, 2 x the best's
   between-run CV) of the best median) and ``95%`` (median at least 95% of the best median).
4. The last table ranks the samplers by their worst landscape: the largest median share of the grid to
   the noise target, then to 95%, then the largest mean time to the noise target relative to random
   sampling's (the first of ``random``/``random-plain`` listed), then the largest 90th percentile to 95%.

Samplers run after the baseline and vendor references (as ``autotune run`` does) unless named
``plain``: ``random-plain`` and ``tpe-plain`` are Optuna's samplers as they come.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna

from autotune.landscape import Landscape, landscape_files, read_landscape
from autotune.replay import TARGETS, Run, replay
from autotune.study.setup import search_sampler

HERE = Path(__file__).resolve().parent
LANDSCAPES = HERE / "landscapes"


def _tpe(**kwargs: object) -> Callable[[int], optuna.samplers.BaseSampler]:
    return lambda seed: optuna.samplers.TPESampler(seed=seed, **kwargs)


# name -> (sampler factory, whether the references are measured first)
SAMPLERS: dict[str, tuple[Callable[[int], optuna.samplers.BaseSampler], bool]] = {
    "random-plain": (lambda seed: optuna.samplers.RandomSampler(seed=seed), False),
    "tpe-plain": (_tpe(), False),
    "random": (lambda seed: optuna.samplers.RandomSampler(seed=seed), True),
    "tpe": (_tpe(), True),
    "default": (search_sampler, True),
    "mvtpe-2": (_tpe(multivariate=True, group=True, n_startup_trials=2), True),
    "mvtpe-3": (_tpe(multivariate=True, group=True, n_startup_trials=3), True),
    "mvtpe-4": (_tpe(multivariate=True, group=True, n_startup_trials=4), True),
    "mvtpe-6": (_tpe(multivariate=True, group=True, n_startup_trials=6), True),
    "mvtpe-10": (_tpe(multivariate=True, group=True, n_startup_trials=10), True),
    "tpe-2": (_tpe(n_startup_trials=2), True),
    "tpe-4": (_tpe(n_startup_trials=4), True),
    "mvtpe-4-nogroup": (_tpe(multivariate=True, n_startup_trials=4), True),
    "qmc": (lambda seed: optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False), True),
    "nsga2": (lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=6), True),
}


def summarize(runs: list[Run], grid: int, kind: str) -> dict[str, float]:
    """Median, mean and 90th percentile of trials and seconds to a target (a miss counts the whole run)."""
    trials = sorted(r.trials[kind] if r.trials[kind] is not None else grid for r in runs)
    seconds = sorted(r.seconds[kind] if r.seconds[kind] is not None else r.spent_s for r in runs)
    p90 = min(len(runs) - 1, math.ceil(0.9 * len(runs)) - 1)
    return {"median": statistics.median(trials), "mean": statistics.fmean(trials), "p90": trials[p90],
            "median_s": statistics.median(seconds), "mean_s": statistics.fmean(seconds), "p90_s": seconds[p90],
            "missed": sum(r.trials[kind] is None for r in runs)}


def run_sampler(landscape: Landscape, name: str, seeds: int, prune: bool = True) -> list[Run]:
    """Replay one sampler on one landscape over ``seeds`` seeds."""
    factory, references = SAMPLERS[name]
    return [replay(landscape, factory(seed), seed, references=references, prune=prune) for seed in range(seeds)]


def describe(landscape: Landscape) -> str:
    """The landscape's host, mode, grid, best, target and noise."""
    stats = landscape.stats()
    cvs = sorted(s.cv for s in stats.values() if s.cv is not None) or [0.0]
    best_id, best = landscape.best()
    unit = landscape.header.get("objective", {}).get("unit", "")
    host = landscape.header["host"]
    return (f"### {landscape.name}\n\n{host['cpu_model']}, {host['logical_cpus']} CPUs, "
            f"{'avx512_bf16' if host['isa'].get('avx512_bf16') else 'no avx512_bf16'}; mode "
            f"{landscape.header.get('mode')}, pins {landscape.header.get('pins')}; {len(landscape.configs)} "
            f"configurations x {max((m.repeat for m in landscape.measurements), default=-1) + 1} repeats, "
            f"recorded in {landscape.recording_seconds() / 60:.0f} min of trials "
            f"({sum(x.get('session_seconds', 0) for x in landscape.sessions) / 60:.0f} min wall clock, waits for "
            f"the cores included). Best: config {best_id} "
            f"{landscape.configs[best_id]['params']} at {best.median:.4g} {unit} (CV {best.cv or 0:.1%}). "
            f"Between-run CV per configuration: median {statistics.median(cvs):.1%}, max {max(cvs):.1%}. "
            f"Noise target within {landscape.tolerance():.1%}: {len(landscape.targets('noise'))} configurations; "
            f"95%: {len(landscape.targets('fraction'))}.")


def main() -> None:
    """Replay the samplers on every landscape and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--landscapes", type=Path, nargs="*", help="landscape files (default: all recorded)")
    parser.add_argument("--no-prune", action="store_true", help="replay without autotune's pruning")
    parser.add_argument("--record", type=Path, metavar="OUT", help="record a landscape on this host first")
    parser.add_argument("--space", type=Path, default=HERE / "reduced_unet3d.toml", help="space --record measures")
    args = parser.parse_args()
    if args.record:
        subprocess.run([sys.executable, str(HERE / "record_landscape.py"), "--space", str(args.space),
                        "--repeats", "3", "--out", str(args.record)], check=True)
    paths = args.landscapes or landscape_files(LANDSCAPES)
    if args.record and args.record not in paths:
        paths.append(args.record)
    names = args.samplers.split(",")
    # sampler -> per landscape: (median share to noise, to 95%, mean time to noise / random's, p90 share to 95%)
    worst: dict[str, list[tuple[float, ...]]] = {n: [] for n in names}
    for path in paths:
        landscape = read_landscape(path)
        grid = len(landscape.configs)
        print(describe(landscape))
        print()
        print("| sampler | noise: median trials | mean | p90 | mean time | p90 time | "
              "95%: median trials | mean | p90 | mean time | p90 time | wasted share |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        random_mean: float | None = None
        for name in names:
            runs = run_sampler(landscape, name, args.seeds, prune=not args.no_prune)
            cells = []
            for kind in TARGETS:
                s = summarize(runs, grid, kind)
                cells += [f"{s['median']:g} ({s['median'] / grid:.0%})", f"{s['mean']:.1f}", f"{s['p90']}",
                          f"{s['mean_s']:.0f} s", f"{s['p90_s']:.0f} s"]
            noise, fraction = summarize(runs, grid, "noise"), summarize(runs, grid, "fraction")
            if name in ("random", "random-plain") and random_mean is None:
                random_mean = noise["mean_s"]
            worst[name].append((noise["median"] / grid, fraction["median"] / grid,
                                noise["mean_s"] / (random_mean or noise["mean_s"]), fraction["p90"] / grid))
            wasted = sum(r.wasted_s for r in runs) / max(sum(r.spent_s for r in runs), 1e-9)
            print(f"| {name} | " + " | ".join(cells) + f" | {wasted:.0%} |")
        print()
    print("### Worst landscape per sampler\n")
    print("| sampler | noise: worst median share of the grid | 95%: worst median share | "
          "noise: worst mean time / random's | 95%: worst p90 share |")
    print("|---|---|---|---|---|")

    def key(name: str) -> tuple[float, ...]:
        return tuple(max(w[i] for w in worst[name]) for i in range(4))

    for name in sorted(names, key=key):
        w = key(name)
        print(f"| {name} | {w[0]:.0%} | {w[1]:.0%} | {w[2]:.2f} | {w[3]:.0%} |")


if __name__ == "__main__":
    main()
