"""Build the small Keras model file the examples use: a conv net for 64x64x3 images, 10 classes.

Usage: python examples/make_model.py [--out examples/model.keras] [--seed 0]

The model is compiled with Adam and sparse categorical crossentropy before it is saved, so the file
holds a loss and an optimizer and ``autotune run --workload keras --set mode=train`` works on it too.
Its weights are random (seeded): the examples measure speed, not accuracy.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "model.keras"
IMAGE_SHAPE = (64, 64, 3)
CLASSES = 10


def build(seed: int = 0):
    """The example model, compiled (Adam, sparse categorical crossentropy)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = inputs
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="example_convnet")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model file to write (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    if args.out.suffix != ".keras":
        parser.error("--out must end in .keras")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model = build(args.seed)
    model.save(args.out)
    print(f"wrote {args.out} ({model.count_params():,} parameters, input {IMAGE_SHAPE}, {CLASSES} classes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
