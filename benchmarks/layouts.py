"""Measure the layout strategies and oneDNN on/off with ``autotune bench``; print a Markdown table.

Usage: python benchmarks/layouts.py [--patch 64] [--mode infer] [--steps 5] [--quick]

Each row is one ``autotune bench --json`` run (a fresh process, warm-up untimed, median of the timed
steps). Nothing is cached: the figures are measured by this run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

LAYOUTS = {
    "channels_first (Keras's own)": ["data_format=channels_first"],
    "channels_first + per-layer transposes": ["data_format=channels_first", "per_layer_transpose=true"],
    "channels_first + transpose elimination": ["data_format=channels_first", "transpose_elimination=true"],
    "channels_last": ["data_format=channels_last"],
}


def bench(sets: list[str]) -> dict:
    """Run one ``autotune bench --json`` and return its record."""
    command = [sys.executable, "-m", "autotune", "bench", "--json"]
    for item in sets:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"bench failed: {done.stderr.strip()}")
    return json.loads(lines[-1])


def main() -> None:
    """Run the grid and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", default="64")
    parser.add_argument("--mode", default="infer", choices=("infer", "train"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--onednn", default="off,on", help="comma list of off/on")
    parser.add_argument("--layouts", default=",".join(str(i) for i in range(len(LAYOUTS))),
                        help="comma list of layout indices")
    args = parser.parse_args()
    names = list(LAYOUTS)
    print(f"patch {args.patch}, batch 1, mode {args.mode}, {args.steps} timed steps after 1 warm-up")
    print()
    print("| layout | oneDNN | median step (s) | CV | voxels/s | GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for onednn in args.onednn.split(","):
        for index in args.layouts.split(","):
            name = names[int(index)]
            sets = [*LAYOUTS[name], f"onednn={'true' if onednn == 'on' else 'false'}", f"patch={args.patch}",
                    f"mode={args.mode}", f"steps={args.steps}", "trial_seconds=0", "batch=1"]
            record = bench(sets)
            if record["outcome"] != "ok":
                print(f"| {name} | {onednn} | {record['outcome']}: {record['reason']} | | | |", flush=True)
                continue
            print(
                f"| {name} | {onednn} | {record['median_step_s']:.3f} | {record['cv']:.1%} | "
                f"{record['voxels_per_s'] / 1e6:.2f} M | {record['gflops_per_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
