"""Does a warm start from another landscape (another host, mode or shape) reach the best sooner? Prints Markdown.

Usage:
    python benchmarks/warm_start.py [--seeds 40] [--top 3] [--landscapes A.jsonl B.jsonl ...]

For every ordered pair of recorded landscapes (source, target) with the same objective, the default
sampler is replayed on the target (:func:`autotune.replay.replay`, costs and pruning as ``autotune run``)
over ``--seeds`` seeds, four ways:

- ``cold``: the references, then the sampler;
- ``first``: the source's ``--top`` best configurations measured after the references (``top_params``);
- ``prior``: the source's pruned or failed configurations handed to the sampler as known-bad (``bad_params``);
- ``warm``: both, as ``autotune run --warm-start`` does (:mod:`autotune.study.warm`).

Each cell gives medians over seeds: configurations measured until one that reaches the target's best
completed, by the noise-aware target and by 95% of the best (:meth:`autotune.landscape.Landscape.targets`),
then the trial seconds spent until the 95% one; a seed that never reaches a target counts the whole grid
(and all its seconds). The references come first in every way, so where the vendor configuration already
reaches the noise target (trial 2) only the 95% target can tell the ways apart.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from autotune.landscape import landscape_files, read_landscape
from autotune.replay import bad_params, replay, top_params
from autotune.study.setup import search_sampler

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Replay cold and warm starts on every pair of landscapes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--top", type=int, default=3, help="source configurations measured first")
    parser.add_argument("--landscapes", type=Path, nargs="*", help="landscape files (default: all recorded)")
    args = parser.parse_args()
    landscapes = [read_landscape(p) for p in (args.landscapes or landscape_files(HERE / "landscapes"))]
    print(f"default sampler, {args.seeds} seeds; cells: median configurations measured to the noise target / "
          "to 95% of the best (share of the target's grid) / median trial seconds to 95%\n")
    print("| target | source | cold | first | prior | warm | warm - cold (95% trials) |")
    print("|---|---|---|---|---|---|---|")
    for target in landscapes:
        grid = len(target.configs)
        for source in landscapes:
            if source is target or source.header["objective"]["name"] != target.header["objective"]["name"]:
                continue
            ways = {"cold": ((), ()), "first": (top_params(source, args.top), ()),
                    "prior": ((), bad_params(source)), "warm": (top_params(source, args.top), bad_params(source))}
            cells, medians = [], {}
            for name, (first, prior) in ways.items():
                runs = [replay(target, search_sampler(seed), seed, first=first, prior=prior)
                        for seed in range(args.seeds)]
                noise = statistics.median(r.trials["noise"] or grid for r in runs)
                trials = statistics.median(r.trials["fraction"] or grid for r in runs)
                seconds = statistics.median(r.seconds["fraction"] if r.seconds["fraction"] is not None
                                            else r.spent_s for r in runs)
                medians[name] = trials
                cells.append(f"{noise:g} / {trials:g} ({trials / grid:.0%}) / {seconds:.0f} s")
            print(f"| {target.name} | {source.name} | " + " | ".join(cells)
                  + f" | {medians['warm'] - medians['cold']:+g} |")


if __name__ == "__main__":
    main()
