"""Which reduced-precision switch acts on a LOADED float32 Keras model? Prints a Markdown table.

Usage: python benchmarks/keras_precision.py [--batch 32] [--steps 20] [--rounds 3] [--out DIR]

Two float32 models are built and saved as ``.keras`` files (a small conv net on 64x64x3 images and a
dense MLP); then each switch is measured in a fresh process on each file: ``predict_on_batch`` after two
untimed calls, median of the timed calls; the switches run interleaved for ``--rounds`` rounds (so load
from other processes falls on all of them alike) and the table gives the median over rounds. Beside the
time, the table says what the loaded model's layers compute in (``compute_dtype``) and how far its
output moved from the float32 output: a switch that leaves the output bit-identical did nothing.

Switches:
* ``global policy before load``: ``keras.mixed_precision.set_global_policy("mixed_bfloat16")``, then
  ``load_model`` (a saved layer carries its own dtype policy, which may win);
* ``clone with policy``: the loaded model cloned layer by layer from its config with
  ``dtype="mixed_bfloat16"``, the float32 weights copied over (what ``workloads.keras`` does);
* ``ONEDNN_DEFAULT_FPMATH_MODE=BF16``: oneDNN's own switch, f32 primitives allowed to compute in bf16;
* ``TF_SET_ONEDNN_FPMATH_MODE=true``: TensorFlow's switch for the same oneDNN mode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWITCHES = {
    "float32 (as saved)": ("none", {}),
    "global policy before load": ("global", {}),
    "clone with policy": ("clone", {}),
    "ONEDNN_DEFAULT_FPMATH_MODE=BF16": ("none", {"ONEDNN_DEFAULT_FPMATH_MODE": "BF16"}),
    "TF_SET_ONEDNN_FPMATH_MODE=true": ("none", {"TF_SET_ONEDNN_FPMATH_MODE": "true"}),
}


def build(out: Path) -> dict[str, Path]:
    """Save the conv and the dense float32 models into ``out``."""
    import keras

    keras.utils.set_random_seed(0)
    conv = keras.Sequential([
        keras.Input((64, 64, 3)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(128, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    dense = keras.Sequential([
        keras.Input((1024,)),
        keras.layers.Dense(2048, activation="relu"),
        keras.layers.Dense(2048, activation="relu"),
        keras.layers.Dense(10),
    ])
    paths = {"conv 64x64x3": out / "conv.keras", "dense 1024-2048-2048": out / "dense.keras"}
    conv.save(paths["conv 64x64x3"])
    dense.save(paths["dense 1024-2048-2048"])
    return paths


def child(path: str, how: str, batch: int, steps: int) -> None:
    """Load ``path`` with switch ``how``, time ``predict_on_batch``, print one JSON line."""
    import keras
    import numpy as np

    if how == "global":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    keras.mixed_precision.set_global_policy("float32")
    reference = keras.saving.load_model(path, compile=False, safe_mode=True)
    if how == "clone":
        clone = keras.models.clone_model(
            model, clone_function=lambda layer: layer.__class__.from_config(
                {**layer.get_config(), "dtype": "mixed_bfloat16"}))
        clone.set_weights(model.get_weights())
        model = clone
    shape = (batch, *model.inputs[0].shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    want = reference.predict_on_batch(x)
    got = model.predict_on_batch(x)
    for _ in range(2):
        model.predict_on_batch(x)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "median_s": statistics.median(times),
        "compute_dtype": model.layers[0].compute_dtype,
        "max_abs_diff": float(np.max(np.abs(np.asarray(got, "float32") - want))),
    }))


def measure(path: Path, how: str, env: dict[str, str], args: argparse.Namespace) -> dict:
    """One child run of a switch: its JSON record, or ``{"error": ...}``."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(path), how, "--batch", str(args.batch), "--steps", str(args.steps)],
        capture_output=True, text=True, env={**os.environ, **env}, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over rounds)")
    parser.add_argument("--out", type=Path, help="folder for the model files (default: a temporary one)")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "HOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        child(*args.child, args.batch, args.steps)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        paths = build(out)
        flags = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        isa = sorted({f for f in flags.split() if f.startswith(("amx", "avx512_bf16", "avx512f"))})
        print(f"CPU flags: {', '.join(isa) or 'no avx512f/avx512_bf16/amx'}; batch {args.batch}, median of "
              f"{args.steps} predict_on_batch calls, median over {args.rounds} interleaved rounds\n")
        print("| model | switch | compute dtype | max abs diff vs float32 | median step (ms) | speed vs float32 |")
        print("|---|---|---|---|---|---|")
        for model, path in paths.items():
            runs: dict[str, list[dict]] = {name: [] for name in SWITCHES}
            for _ in range(args.rounds):
                for name, (how, env) in SWITCHES.items():
                    runs[name].append(measure(path, how, env, args))
            base = statistics.median(r["median_s"] for r in runs["float32 (as saved)"] if r)
            for name, results in runs.items():
                done = [r for r in results if "median_s" in r]
                if not done:
                    print(f"| {model} | {name} | failed: {results[-1].get('error')} | | | |")
                    continue
                median = statistics.median(r["median_s"] for r in done)
                print(f"| {model} | {name} | {done[0]['compute_dtype']} | {done[0]['max_abs_diff']:.2e} | "
                      f"{median * 1e3:.2f} | {base / median:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
