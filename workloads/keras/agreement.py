"""What a keras trial computed, for the driver's output-agreement check (:mod:`autotune.outputs`).

After the timed steps, when the driver asks (``TrialConfig.outputs``), the trial runs the model it timed,
with the shapes it timed, once more on fixed check inputs and the model file's own weights:

* the check inputs are the user's inputs file when one is given, else synthetic inputs of the timed
  shapes drawn with :data:`CHECK_SEED`, whatever the trial's ``seed`` knob;
* the weights are the file's as it comes (reset after training steps changed them): ``model`` weights,
  labelled ``weights of <file name>``; with the ``untrained`` knob set, the file's weights are declared
  random, and only raw outputs are judged, never labels;
* inference: the outputs of ``predict_on_batch`` (the timed function), with labels when the output
  layer says what they are (:func:`label_kind`);
* training: the loss and the global gradient norm of one step at the file's weights, with every random
  training layer switched off (:func:`switch_off_randomness`), since dropout draws differ between
  precisions; the step is a fresh ``tf.function``, compiled with XLA when the trial is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autotune.outputs import array_digest, encode_outputs, encode_scalars, weights_info

# Seed of the synthetic check inputs: fixed, so every configuration of a study sees the same inputs.
CHECK_SEED = 1_000_003
# Attributes of Keras layers that make a training step random, set to 0 for the check: Dropout and its
# subclasses, GaussianDropout and AlphaDropout (``rate``), GaussianNoise (``stddev``), RNN cells
# (``dropout``, ``recurrent_dropout``) and MultiHeadAttention (``_dropout``, besides its Dropout layer).
RANDOM_ATTRIBUTES = {"rate": ("Dropout", "GaussianDropout", "AlphaDropout"), "stddev": ("GaussianNoise",),
                     "dropout": None, "recurrent_dropout": None, "_dropout": None}


def check_weights(weights: list[np.ndarray], model_path: str, *, untrained: bool) -> dict[str, str]:
    """:func:`~autotune.outputs.weights_info` of the model file's weights (``random`` if ``untrained``)."""
    name = Path(model_path).name
    if untrained:
        return weights_info("random", array_digest(*weights), f"untrained weights of {name}")
    return weights_info("model", array_digest(*weights), f"weights of {name}")


def label_kind(keras: Any, model: Any) -> str | None:
    """How the labels of ``model``'s output are read: ``threshold``, ``argmax`` or None.

    A single output made by a sigmoid is thresholded, one made by a softmax is arg-maxed (over the last
    axis); any other output (linear, several outputs) is judged by its raw values only.
    """
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        return None
    history = getattr(outputs[0], "_keras_history", None)
    layer = history[0] if history else (model.layers[-1] if model.layers else None)
    if isinstance(layer, keras.layers.Softmax):
        return "argmax"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", "") if activation is not None else ""
    return {"sigmoid": "threshold", "softmax": "argmax"}.get(name)


def infer_payload(model: Any, x: Any, *, labels: str | None, weights: dict[str, str],
                  inputs_digest: str) -> dict[str, Any]:
    """The outputs payload of ``model.predict_on_batch(x)`` (several outputs: flattened, concatenated)."""
    import tensorflow as tf

    flat = [np.asarray(o, dtype=np.float32) for o in tf.nest.flatten(model.predict_on_batch(x))]
    if len(flat) == 1:
        outputs = flat[0]
    else:
        outputs, labels = np.concatenate([o.reshape(-1) for o in flat]), None
    return encode_outputs(outputs, weights=weights, labels=labels, inputs_digest=inputs_digest)


def train_payload(keras: Any, model: Any, x: Any, y: Any, *, xla: bool, weights: dict[str, str],
                  inputs_digest: str) -> dict[str, Any]:
    """The scalars payload of one training step at the current weights: ``loss`` and ``grad_norm``.

    Nothing is applied: the step computes the compiled loss on ``(x, y)`` and the gradients of the
    trainable weights, and returns them (random training layers are switched off first).
    """
    import tensorflow as tf

    switch_off_randomness(keras, model)

    @tf.function(jit_compile=xla)
    def first_step(x: Any, y: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        grads = [tf.cast(g, tf.float32) for g in grads if g is not None]
        return tf.cast(loss, tf.float32), tf.linalg.global_norm(grads)

    loss, norm = first_step(x, y)
    return encode_scalars({"loss": float(loss), "grad_norm": float(norm)}, weights=weights,
                          inputs_digest=inputs_digest)


def switch_off_randomness(keras: Any, model: Any) -> list[str]:
    """Set every random training attribute of ``model``'s layers to 0 (see :data:`RANDOM_ATTRIBUTES`).

    Returns:
        ``layer.attribute`` for each attribute that was not 0 already.
    """
    changed = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for attribute, classes in RANDOM_ATTRIBUTES.items():
            if classes is not None and not (type(layer).__name__ in classes or isinstance(layer, keras.layers.Dropout)):
                continue
            value = getattr(layer, attribute, None)
            if not (isinstance(value, int | float) and not isinstance(value, bool) and value):
                continue
            try:
                setattr(layer, attribute, 0.0)
            except AttributeError:  # a read-only view of another layer's (an RNN's cell's), reached too
                continue
            changed.append(f"{layer.name}.{attribute}")
    return changed
