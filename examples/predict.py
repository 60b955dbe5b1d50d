"""Predict with a small Keras model: a job of your own, to tune with ``autotune run --workload command``.

    python examples/predict.py --batch 8 --batches 20 --report
    autotune run --workload command -- python examples/predict.py --batches 20

It loads ``examples/model.keras`` (or ``--model PATH``; with no file it builds a tiny seeded model
itself), runs one untimed warm-up call, then ``--batches`` predictions of ``--batch`` random inputs. With
``--report`` it prints its throughput as ``@autotune {"samples_per_s": ...}``, the line a search space
with ``figure_key = "samples_per_s"`` reads. In-process knobs arrive as JSON in ``AUTOTUNE_PARAMS``.

Its answers, for a quality figure (``quality_key = "top1_agreement"``): after the timed calls it predicts
the classes of :data:`CHECK_SAMPLES` fixed inputs, in batches of ``--batch``. ``--save-labels FILE``
saves them (run it once, as you run the job today); ``--labels FILE`` compares with them and prints the
share that agree, ``top1_agreement`` (1.0: the same answers), in the ``@autotune`` line too. The example
model's weights are random, so its classes are close calls: a real job compares with its own labels.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

# Fixed check inputs whose predicted classes are compared: seeded, the same for every batch size.
CHECK_SAMPLES = 64
CHECK_SEED = 1


def tiny_model():
    import keras

    keras.utils.set_random_seed(0)
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
    parser.add_argument("--save-labels", type=Path, help="save the classes of the fixed check inputs (.npy)")
    parser.add_argument("--labels", type=Path, help="compare with saved classes: print top1_agreement")
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
    figures = {"samples_per_s": rate}
    if args.save_labels or args.labels:
        classes = check_classes(model, batch)
        if args.save_labels:
            np.save(args.save_labels, classes)
            print(f"saved the classes of {CHECK_SAMPLES} check inputs to {args.save_labels}")
        if args.labels:
            figures["top1_agreement"] = agreement(classes, args.labels)
            print(f"top-1 agreement: {figures['top1_agreement']:.4f}")
    if args.report:
        print("@autotune " + json.dumps(figures))


def check_classes(model, batch: int) -> np.ndarray:
    """The predicted classes of the fixed check inputs, predicted in batches of ``batch`` (the timed shape)."""
    count = -(-CHECK_SAMPLES // batch) * batch
    inputs = np.random.default_rng(CHECK_SEED).random((count, *model.input_shape[1:]), dtype=np.float32)
    outputs = np.concatenate([model.predict_on_batch(inputs[i:i + batch]) for i in range(0, count, batch)])
    return np.argmax(outputs[:CHECK_SAMPLES], axis=-1)


def agreement(classes: np.ndarray, path: Path) -> float:
    """The share of ``classes`` equal to the saved ones in ``path``; exits with one line if they do not fit."""
    try:
        saved = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: not a labels file saved with --save-labels ({exc})") from None
    if saved.shape != classes.shape:
        raise SystemExit(f"{path}: holds {saved.shape} labels, expected {classes.shape} (saved for another model?)")
    return float(np.mean(saved == classes))


if __name__ == "__main__":
    main()
