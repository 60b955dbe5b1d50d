"""Measure unet3d output agreement with the trained check weights; print a Markdown table.

Usage: python benchmarks/agreement_table.py [--patch 128] [--mode infer] [--precisions float32,mixed_bfloat16]
       [--layouts channels_last,cf_keras,cf_eliminated] [--xla off,on] [--onednn on,off] [--params JSON] [--json FILE]

Each row is one trial child (``python -m workloads.unet3d --config F``, a fresh process, the config's
``outputs`` set, one timed step, no warm-up) whose check payload is compared
(:func:`autotune.outputs.compare`) with the reference's: float32, channels_last, oneDNN on, no XLA,
the driver's reference configuration. It runs ``--prepare`` first (the check weights are trained once
and cached). Nothing else is cached: every figure is measured by this run.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from autotune.outputs import compare
from autotune.protocol import LINE_PREFIX, TrialConfig

LAYOUTS = {
    "channels_last": {"data_format": "channels_last"},
    "cf_keras": {"data_format": "channels_first"},
    "cf_eliminated": {"data_format": "channels_first", "transpose_elimination": True},
    "cf_per_layer": {"data_format": "channels_first", "per_layer_transpose": True},
}
REFERENCE = ("float32", "channels_last", "off", "on")
FIGURES = ("max_abs_error", "rel_l2_error", "dice", "label_flip_share")
SCALARS = ("loss_rel_error", "grad_norm_rel_error")


def run_child(params: dict, onednn: str, flag: str | None = None) -> dict:
    """Run one workload child and return its last protocol message."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.json"
        config.write_text(TrialConfig("unet3d", params, timed_steps=1, outputs=True).to_json())
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn == "on" else "0"}
        command = [sys.executable, "-m", "workloads.unet3d", "--config", str(config), *([flag] if flag else [])]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    messages = [json.loads(line[len(LINE_PREFIX):]) for line in done.stdout.splitlines()
                if line.startswith(LINE_PREFIX)]
    if not messages or messages[-1]["kind"] not in ("result", "prepared"):
        raise SystemExit(f"child failed ({done.returncode}): {messages[-1] if messages else ''} {done.stderr[-2000:]}")
    return messages[-1]


def versions() -> str:
    """TensorFlow and Keras versions, read in a child so this process stays free of TensorFlow."""
    code = "import tensorflow as tf, keras; print(tf.__version__, keras.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    tf_version, keras_version = [*done.stdout.split(), "?", "?"][:2]
    return f"TensorFlow {tf_version}, Keras {keras_version}"


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main() -> None:
    """Prepare the weights, run the grid and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", default="128")
    parser.add_argument("--mode", default="infer", choices=("infer", "train"))
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--layouts", default="channels_last,cf_keras,cf_eliminated")
    parser.add_argument("--xla", default="off,on")
    parser.add_argument("--onednn", default="on,off")
    parser.add_argument("--params", default="{}", help="JSON object of further knobs (a smaller network)")
    parser.add_argument("--json", help="also write every row's figures to this file")
    args = parser.parse_args()
    base = {"mode": args.mode, "patch": args.patch, "batch": 1, "warmup": 0, "steps": 1, "trial_seconds": 0.0,
            **json.loads(args.params)}
    prepared = run_child(base, "on", "--prepare")
    grid = [REFERENCE] + [combo for combo in itertools.product(
        args.precisions.split(","), args.layouts.split(","), args.xla.split(","), args.onednn.split(","))
        if combo != REFERENCE]
    rows = []
    reference = None
    for precision, layout, xla, onednn in grid:
        params = {**base, **LAYOUTS[layout], "precision": precision, "xla": xla == "on"}
        record = run_child(params, onednn)
        reference = reference or record["outputs"]
        figures = compare(record["outputs"], reference)
        rows.append({"precision": precision, "layout": layout, "xla": xla, "onednn": onednn, **figures,
                     "step_s": record["median_step_s"], "check_s": record["figures"]["check_seconds"],
                     "payload_bytes": len(json.dumps(record["outputs"]))})
        print(f"# {precision} {layout} xla={xla} onednn={onednn}: {figures}, first step {rows[-1]['step_s']:.2f} s, "
              f"check {rows[-1]['check_s']:.2f} s", file=sys.stderr, flush=True)
    print(f"unet3d {args.mode}, patch {args.patch}, batch 1; host {platform.node()}, {cpu_name()}, "
          f"{os.cpu_count()} CPUs; {versions()}; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"check weights: {prepared['weights']['label']} (digest {prepared['weights']['digest']}); "
          f"reference: float32, channels_last, oneDNN on, no XLA")
    print()
    names = FIGURES if args.mode == "infer" else SCALARS
    print("| precision | layout | XLA | oneDNN | " + " | ".join(names) + " | first step (s) | check (s) |")
    print("|---" * (len(names) + 6) + "|")
    for row in rows:
        cells = [f"{row.get(name, float('nan')):.3g}" for name in names]
        print(f"| {row['precision']} | {row['layout']} | {row['xla']} | {row['onednn']} | {' | '.join(cells)} | "
              f"{row['step_s']:.2f} | {row['check_s']:.2f} |")
    print()
    print(f"payload: {rows[0]['payload_bytes']} bytes of JSON per trial")
    if args.json:
        Path(args.json).write_text(json.dumps({"prepared": prepared, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
