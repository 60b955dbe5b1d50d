"""Predict with a small Keras model: a job of your own, to tune with ``autotune run --workload command``.

    python examples/predict.py --batch 8 --batches 20 --report
    autotune run --workload command -- python examples/predict.py --batches 20

It loads ``examples/model.keras`` (or ``--model PATH``; with no file it builds a tiny model itself),
runs one untimed warm-up call, then ``--batches`` predictions of ``--batch`` random inputs. With
``--report`` it prints its throughput as ``@autotune {"samples_per_s": ...}``, the line a search space
with ``figure_key = "samples_per_s"`` reads. In-process knobs arrive as JSON in ``AUTOTUNE_PARAMS``.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def tiny_model():
    import keras

    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description="Time predictions of a Keras model.")
    parser.add_argument("--model", type=Path, default=Path(__file__).with_name("model.keras"))
    parser.add_argument("--batch", type=int, default=8, help="samples per prediction call")
    parser.add_argument("--batches", type=int, default=20, help="timed prediction calls")
    parser.add_argument("--report", action="store_true", help="print the figure as an @autotune line")
    args = parser.parse_args()
    params = json.loads(os.environ.get("AUTOTUNE_PARAMS") or "{}")  # knobs with target "param"
    batch = int(params.get("batch", args.batch))

    import keras  # imported after parsing, so --help is quick

    model = keras.saving.load_model(args.model) if args.model.exists() else tiny_model()
    inputs = np.random.default_rng(0).random((batch, *model.input_shape[1:]), dtype=np.float32)
    model.predict_on_batch(inputs)  # warm-up: builds the graph, not timed
    start = time.perf_counter()
    for _ in range(args.batches):
        model.predict_on_batch(inputs)
    rate = batch * args.batches / (time.perf_counter() - start)
    print(f"{rate:.1f} samples/s ({args.batches} batches of {batch})")
    if args.report:
        print("@autotune " + json.dumps({"samples_per_s": rate}))


if __name__ == "__main__":
    main()
