"""Each knob's effect alone: paired, interleaved rounds against a base configuration, with an interval.

Usage:
    python benchmarks/knob_effect.py --from vendor_recommended --set patch=64 \\
        --variant instance_norm=group_norm --variant allocator=mimalloc --rounds 5 [--profile]

Every round measures the base and then each variant (the base plus that one change) in fresh processes,
one after the other, as ``autotune bench`` does (same space, host probe, pinning, warm-up untimed,
median of the timed steps). The effect of a variant is the median over rounds of its paired ratio to
the base in that round, so drift common to a round cancels; its interval is the distribution-free
order-statistic interval of that median (5 rounds: 93.8%). ``--profile`` adds one profiled run of the
base and of each variant: the share of op time per category (Conv3D, normalization, element-wise, ...),
from the TensorFlow profiler, as ``autotune profile`` reports it. Nothing is cached; the host and the
date are printed with the figures.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path
from typing import Any

from autotune.host import probe_host
from autotune.intervals import median_interval
from autotune.measurer import Measurer
from autotune.profile import CATEGORIES, ProfileFailed, profile_config
from autotune.protocol import Outcome
from autotune.record import trial_record
from autotune.space import HostFacts, load_space

ROOT = Path(__file__).resolve().parents[1]


def measure(measurer: Measurer, config: dict[str, Any]) -> float | None:
    """One fresh-process measurement of ``config``: its objective figure, or None when it failed."""
    spec, outcome = measurer.measure(config, "knob effect")
    if outcome.outcome is not Outcome.OK:
        print(f"  failed: {outcome.outcome.value}: {outcome.reason}", file=sys.stderr)
        return None
    return measurer.space.objective.value(trial_record(config, spec, outcome, measurer.host))


def main() -> int:
    """Measure, then print a Markdown table of each variant's paired effect."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "unet3d.toml")
    parser.add_argument("--from", dest="start", default="vendor_recommended",
                        choices=("baseline", "vendor_recommended"))
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", help="change the base")
    parser.add_argument("--variant", action="append", required=True, metavar="KNOB=VALUE[,KNOB=VALUE]",
                        help="one variant: the base with these changes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also profile the base and each variant once")
    args = parser.parse_args()

    host = probe_host()
    space = load_space(args.space, HostFacts.of(host))
    base_pins = space.parse_assignments(args.set)
    base = space.reference(args.start, base_pins)
    variants = {text: space.reference(args.start, {**base_pins, **space.parse_assignments(text.split(","))})
                for text in args.variant}
    measurer = Measurer(space, host, timeout_s=900.0)
    print(f"host: {host.cpu_model}, {host.logical_cpus} logical CPUs; "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; base: {args.start} with {args.set}")
    figures: dict[str, list[float | None]] = {name: [] for name in ["base", *variants]}
    for r in range(args.rounds):
        for name, config in [("base", base), *variants.items()]:
            figures[name].append(measure(measurer, config))
            print(f"round {r + 1}: {name}: {figures[name][-1]}", file=sys.stderr)
    print()
    print(f"| configuration | median {space.objective.unit} | paired ratio to the base (median) | interval |")
    print("|---|---|---|---|")
    base_values = [v for v in figures["base"] if v is not None]
    print(f"| base | {statistics.median(base_values):.4g} | 1 | |" if base_values else "| base | failed | | |")
    for name in variants:
        pairs = [(v, b) for v, b in zip(figures[name], figures["base"], strict=True) if v and b]
        if not pairs:
            print(f"| {name} | failed | | |")
            continue
        ratios = [space.objective.speedup(v, b) for v, b in pairs]
        interval = median_interval(ratios)
        print(f"| {name} | {statistics.median(v for v, _ in pairs):.4g} | {statistics.median(ratios):.3f} | "
              f"{interval.low:.3f}-{interval.high:.3f} ({interval.level_text()}, {len(ratios)} rounds) |")
    if args.profile:
        print()
        print("| configuration | " + " | ".join(CATEGORIES) + " | op ms/step |")
        print("|---|" + "---|" * (len(CATEGORIES) + 1))
        for name, config in [("base", base), *variants.items()]:
            try:
                with measurer.holding("knob effect profile"):
                    breakdown = profile_config(measurer, config)
            except ProfileFailed as exc:
                print(f"| {name} | profile failed: {exc} |")
                continue
            shares = " | ".join(f"{100 * breakdown.share(c):.0f}%" for c in CATEGORIES)
            print(f"| {name} | {shares} | {1000 * breakdown.per_step(breakdown.op_seconds):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
