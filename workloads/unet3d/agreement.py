"""The output check of a unet3d trial: what the timed model computes for fixed inputs and weights.

Run after the timed steps (and after the profiler), with the model, compiled step functions and
shapes that were timed, when the driver asks for it (``TrialConfig.outputs``):

* the check inputs are the trial's first batch, converted to channels_last. Its patch positions depend
  only on the ``seed`` knob (pinned, never searched) and the shapes, so every configuration of a shape
  gets the same values; the payload carries their digest, and a payload of other inputs cannot be
  compared (:func:`autotune.outputs.compare` refuses it);
* the model's weights are reset to the check weights (:mod:`workloads.unet3d.weights`), whatever the
  timed steps did to them; in inference they are set before the timed steps instead, and the outputs
  are those a timed step computed for the first batch (:func:`timed_outputs_payload`: no extra pass);
* infer: ``model.predict_on_batch``, the function that was timed (XLA, precision, layout), its sigmoid
  outputs as float32 channels_last with thresholded labels (:func:`autotune.outputs.encode_outputs`);
* train: the first step's loss and global gradient norm on the same batch and its targets, with the
  spatial dropout off (its random draws differ between precisions), in a ``tf.function`` compiled as
  the timed step is (XLA or not, the policy's compute dtype) (:func:`autotune.outputs.encode_scalars`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from autotune.outputs import array_digest, encode_outputs, encode_scalars, weights_info
from workloads.unet3d.weights import CheckWeights


def to_channels_last(array: np.ndarray, channels_last: bool) -> np.ndarray:
    """A batch in the canonical channels_last layout, float32 and contiguous."""
    values = np.asarray(array, dtype=np.float32)
    return np.ascontiguousarray(values if channels_last else np.moveaxis(values, 1, -1))


def reset_weights(model: Any, check: CheckWeights) -> dict[str, str]:
    """Set the model's weights to the check weights; return their description with the model's digest.

    The digest is taken from the model after the reset, so weights moved in another order than the
    file's would show as other weights, never pass as the same.
    """
    model.set_weights(check.values)
    return weights_info(check.info["kind"], array_digest(*model.get_weights()), check.info["label"])


def infer_payload(model: Any, x: np.ndarray, y: np.ndarray | None, *, channels_last: bool,
                  weights: dict[str, str]) -> dict[str, Any]:
    """Outputs of the timed inference function for the check batch ``x`` (in the model's layout)."""
    del y
    outputs = to_channels_last(model.predict_on_batch(x), channels_last)
    return encode_outputs(outputs, weights=weights, labels="threshold", channel_axis=-1,
                          inputs_digest=array_digest(to_channels_last(x, channels_last)))


def timed_outputs_payload(
    outputs: Any, x: np.ndarray, *, channels_last: bool, weights: dict[str, str]
) -> dict[str, Any]:
    """The payload of outputs a timed inference step already computed for the check batch ``x``.

    Used when the trial ran its timed steps with the check weights set (inference: a forward pass
    costs the same whatever the weights), so the check adds no pass of its own.
    """
    values = to_channels_last(np.asarray(outputs), channels_last)
    return encode_outputs(values, weights=weights, labels="threshold", channel_axis=-1,
                          inputs_digest=array_digest(to_channels_last(x, channels_last)))


def train_payload(model: Any, x: np.ndarray, y: np.ndarray, *, channels_last: bool, weights: dict[str, str],
                  loss: Callable[[Any, Any], Any], xla: bool) -> dict[str, Any]:
    """Loss and global gradient norm of a first training step on the check batch, dropout off."""
    import keras
    import tensorflow as tf

    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, keras.layers.SpatialDropout3D):
            inner.rate = 0.0

    @tf.function(jit_compile=xla)
    def first_step(inputs, targets):
        with tf.GradientTape() as tape:
            value = loss(targets, model(inputs, training=True))
        gradients = tape.gradient(value, model.trainable_variables)
        return value, tf.linalg.global_norm(gradients)

    value, norm = first_step(tf.constant(x), tf.constant(y))
    digest = array_digest(to_channels_last(x, channels_last), to_channels_last(y, channels_last))
    return encode_scalars({"loss": float(value), "grad_norm": float(norm)}, weights=weights,
                          inputs_digest=digest)


def run_check(model: Any, x: np.ndarray, y: np.ndarray | None, *, mode: str, channels_last: bool,
              weights: CheckWeights, loss: Callable[[Any, Any], Any], xla: bool) -> tuple[dict[str, Any], float]:
    """The check payload of a trial and the seconds it took (the weights' reset included).

    Args:
        model: The timed, compiled model.
        x: The check inputs in the model's layout.
        y: The check targets in the model's layout (train mode), else None.
        mode: ``infer`` or ``train``.
        channels_last: Whether the model's inputs and outputs are channels_last.
        weights: The check weights (:func:`workloads.unet3d.weights.check_weights`), loaded before the
            timed steps so that missing or unfit weights end the trial before it measures anything.
        loss: The training loss, bound to the model's channel axis.
        xla: Whether the timed step was compiled with XLA.
    """
    start = time.perf_counter()
    info = reset_weights(model, weights)
    if mode == "train":
        payload = train_payload(model, x, y, channels_last=channels_last, weights=info, loss=loss, xla=xla)
    else:
        payload = infer_payload(model, x, y, channels_last=channels_last, weights=info)
    return payload, time.perf_counter() - start
