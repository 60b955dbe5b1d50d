"""Small Keras model files the keras workload tests run on (built and saved at test time)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # after the environment above

VOCAB = 50


def save(model: keras.Model, folder: Path, name: str) -> Path:
    path = folder / f"{name}.keras"
    model.save(path)
    return path


def mobilenet(folder: Path) -> Path:
    """``keras.applications.MobileNetV2`` at 32x32x3, random weights, 10 classes, uncompiled."""
    keras.utils.set_random_seed(0)
    return save(keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10), folder, "mobilenet")


def sequence(folder: Path) -> Path:
    """A non-convolutional model: token and float-feature inputs (variable length), Embedding, self-
    attention block and an LSTM; compiled (Adam, sparse categorical crossentropy), so it trains too."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    features = keras.Input((None, 4), name="features")
    x = keras.layers.Embedding(VOCAB, 16)(tokens)
    x = keras.layers.Concatenate()([x, keras.layers.Dense(16)(features)])
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    x = keras.layers.LayerNormalization()(x + attended)
    x = keras.layers.LSTM(16)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model([tokens, features], outputs, name="sequence")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return save(model, folder, "sequence")


def mixed_inputs() -> keras.Model:
    """Three inputs: integers read by an Embedding, integers read by no Embedding, floats."""
    ids = keras.Input((6,), dtype="int32", name="ids")
    counts = keras.Input((3,), dtype="int64", name="counts")
    floats = keras.Input((5,), name="floats")
    x = keras.layers.Flatten()(keras.layers.Embedding(VOCAB, 4)(ids))
    y = keras.layers.Dense(2)(keras.ops.cast(counts, "float32"))
    outputs = keras.layers.Dense(1)(keras.layers.Concatenate()([x, y, floats]))
    return keras.Model([ids, counts, floats], outputs)


def dense(folder: Path, *, compiled: bool = False, name: str = "dense") -> Path:
    """A small MLP on 8 features, compiled (Adam, MSE) or not."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    if compiled:
        model.compile(optimizer="adam", loss="mse")
    return save(model, folder, name)


def with_lambda(folder: Path) -> Path:
    """A model holding a Lambda layer (Python code): safe_mode must refuse to load it."""
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    return save(keras.Model(inputs, outputs), folder, "lambda")


def head(folder: Path, activation: str | None, *, name: str) -> Path:
    """A small conv net on 8x8x3 images with a 4-channel head of ``activation`` (sigmoid, softmax, None)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4, activation=activation),
    ])
    return save(model, folder, name)


def two_outputs() -> keras.Model:
    """One input, two outputs (a softmax and a linear head)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, [keras.layers.Dense(3, activation="softmax")(hidden), keras.layers.Dense(2)(hidden)])


def noisy(folder: Path) -> Path:
    """A compiled model whose training step is random: Dropout, GaussianNoise and an LSTM with dropout."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 4))
    x = keras.layers.LSTM(8, dropout=0.3, recurrent_dropout=0.2)(keras.layers.GaussianNoise(0.5)(inputs))
    x = keras.layers.Dropout(0.5)(keras.layers.Dense(16, activation="relu")(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return save(model, folder, "noisy")
