"""Layers the 3D U-Net needs beyond Keras: instance normalization, a Conv3D and layout helpers.

The layout helpers convert between channels_first (``N, C, D, H, W``) and channels_last
(``N, D, H, W, C``) tensors, either once per model (``to_channels_last`` / ``to_channels_first``)
or around every layer (``ChannelsLastWrapper``, the per-layer transposes Keras 2 inserted on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from workloads.unet3d.model import NORMS

_SERIALIZATION_PACKAGE = "autotune"


def channels_last_permutation(ndim: int) -> tuple[int, ...]:
    """Axis order that turns a channels_first tensor of rank ``ndim`` into channels_last.

    Args:
        ndim: Rank of the tensor, batch axis included (5 for volumes).

    Returns:
        The permutation, e.g. ``(0, 2, 3, 4, 1)`` for rank 5.
    """
    return (0, *range(2, ndim), 1)


def channels_first_permutation(ndim: int) -> tuple[int, ...]:
    """Axis order that turns a channels_last tensor of rank ``ndim`` into channels_first.

    Args:
        ndim: Rank of the tensor, batch axis included (5 for volumes).

    Returns:
        The permutation, e.g. ``(0, 4, 1, 2, 3)`` for rank 5.
    """
    return (0, ndim - 1, *range(1, ndim - 1))


def to_channels_last(name: str = "to_channels_last", dtype=None) -> keras.layers.Permute:
    """A layer that transposes a channels_first volume batch to channels_last.

    Args:
        name: Layer name.
        dtype: Dtype policy of the layer; ``None`` uses the global policy.

    Returns:
        A ``Permute`` layer for rank-5 inputs.
    """
    return keras.layers.Permute((2, 3, 4, 1), name=name, dtype=dtype)


def to_channels_first(name: str = "to_channels_first", dtype=None) -> keras.layers.Permute:
    """A layer that transposes a channels_last volume batch to channels_first.

    Args:
        name: Layer name.
        dtype: Dtype policy of the layer; ``None`` uses the global policy.

    Returns:
        A ``Permute`` layer for rank-5 inputs.
    """
    return keras.layers.Permute((4, 1, 2, 3), name=name, dtype=dtype)


def _shape_to_channels_last(shape: Sequence[int | None]) -> tuple[int | None, ...]:
    return (shape[0], *shape[2:], shape[1])


def _shape_to_channels_first(shape: Sequence[int | None]) -> tuple[int | None, ...]:
    return (shape[0], shape[-1], *shape[1:-1])


@keras.saving.register_keras_serializable(package=_SERIALIZATION_PACKAGE)
class InstanceNormalization(keras.layers.Layer):
    """Instance normalization: per sample and per channel, over all spatial axes.

    Computes ``gamma * (x - mean) / sqrt(var + epsilon) + beta`` where ``mean`` and ``var`` are
    taken over every axis except the batch axis and ``axis``; ``gamma`` (initialised to 1) and
    ``beta`` (initialised to 0) hold one value per channel. As Keras' own normalization layers do,
    16-bit inputs are normalised in float32 and the result is cast back to the compute dtype.

    Args:
        axis: The channel axis: 1 for channels_first, -1 for channels_last.
        epsilon: Added to the variance before the square root.
        **kwargs: Passed to ``keras.layers.Layer`` (``name``, ``dtype``, ...).
    """

    def __init__(self, axis: int = -1, epsilon: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = epsilon
        self.supports_masking = False

    def build(self, input_shape) -> None:
        ndim = len(input_shape)
        axis = self.axis % ndim
        if axis == 0:
            raise ValueError("InstanceNormalization: the channel axis cannot be the batch axis")
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                f"InstanceNormalization: channel axis {self.axis} of input shape {input_shape} "
                "must be known"
            )
        self._reduction_axes = tuple(i for i in range(1, ndim) if i != axis)
        self._broadcast_shape = tuple(channels if i == axis else 1 for i in range(ndim))
        self.input_spec = keras.layers.InputSpec(ndim=ndim, axes={axis: channels})
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, inputs):
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = ops.moments(x, axes=self._reduction_axes, keepdims=True)
        gamma = ops.reshape(ops.cast(self.gamma, x.dtype), self._broadcast_shape)
        beta = ops.reshape(ops.cast(self.beta, x.dtype), self._broadcast_shape)
        scale = gamma * ops.rsqrt(variance + self.epsilon)
        return ops.cast(x * scale + (beta - mean * scale), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}


def instance_norm(implementation: str, axis: int, channels: int, *, name: str, dtype=None) -> keras.layers.Layer:
    """An instance-normalization layer by ``implementation`` (one of ``model.NORMS``); the same function.

    Both hold gamma then beta, one value per channel, so weights move between them with ``set_weights``.
    TensorFlow's graph optimizer (its remapper, oneDNN on) replaces what :class:`InstanceNormalization`
    computes (``Mean``, ``SquaredDifference`` once ``Square(Sub)`` is rewritten, ``Mean``, ``AddV2``,
    ``Rsqrt``, ``Mul``, ``Mul``, ``Mul``, ``Sub``, ``AddV2``) and the ``LeakyRelu`` after it by one
    ``_MklFusedInstanceNorm``, but only where gamma and beta are graph constants (seen on TensorFlow 2.21
    with a graph built by hand): never while the weights are variables, as in any Keras model as it runs.
    Keras's ``GroupNormalization`` reshapes into groups first, which that pattern does not match.

    Raises:
        ValueError: An unknown implementation.
    """
    if implementation == "moments":
        return InstanceNormalization(axis, dtype=dtype, name=name)
    if implementation == "group_norm":  # Keras's own: one group per channel is instance normalization
        return keras.layers.GroupNormalization(groups=channels, axis=axis, epsilon=1e-5, dtype=dtype, name=name)
    raise ValueError(f"unknown instance normalization {implementation!r}; choose one of {', '.join(NORMS)}")



@keras.saving.register_keras_serializable(package=_SERIALIZATION_PACKAGE)
class SafeBiasConv3D(keras.layers.Conv3D):
    """``keras.layers.Conv3D`` whose channels_first bias is added on the channel axis.

    In Keras 3 (seen in 3.15, TensorFlow backend) ``Conv3D.call`` adds the bias through
    ``keras.ops.add``, which turns a bias-shaped operand into ``tf.nn.bias_add`` and picks NHWC
    whenever the last axis has as many entries as the bias. A channels_first output whose width
    equals its filter count (e.g. 32 filters at width 32: level 1 of the reference network on
    64^3 patches) then gets the bias added along the width. This layer adds the reshaped bias
    with the backend's own broadcasting instead; channels_last layers run ``Conv3D.call``
    unchanged, so their Conv3D + BiasAdd fusion is kept.

    Args:
        *args: Passed to ``keras.layers.Conv3D``.
        **kwargs: Passed to ``keras.layers.Conv3D``.
    """

    def call(self, inputs):
        if self.data_format == "channels_last" or not self.use_bias:
            return super().call(inputs)
        outputs = self.convolution_op(inputs, self.kernel)
        outputs = outputs + ops.reshape(self.bias, (1, self.filters) + (1,) * self.rank)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package=_SERIALIZATION_PACKAGE)
class ChannelsLastWrapper(keras.layers.Wrapper):
    """Runs a channels_last layer on channels_first tensors, transposing before and after.

    This is the per-layer transpose that Keras 2 placed around channels_first layers on CPU:
    ``x -> transpose to channels_last -> layer -> transpose back``. The wrapper owns no weights
    of its own, so a model built with it has the same weight list as one built without it.

    Args:
        layer: A layer built with ``data_format="channels_last"`` (or ``axis=-1``).
        **kwargs: Passed to ``keras.layers.Wrapper``; ``name`` defaults to
            ``"<layer name>_transposed"``.
    """

    def __init__(self, layer: keras.layers.Layer, **kwargs) -> None:
        kwargs.setdefault("name", f"{layer.name}_transposed")
        super().__init__(layer, **kwargs)

    def build(self, input_shape) -> None:
        if not self.layer.built:
            self.layer.build(_shape_to_channels_last(input_shape))

    def call(self, inputs, training=None):
        ndim = len(inputs.shape)
        x = ops.transpose(inputs, channels_last_permutation(ndim))
        x = self.layer(x)
        return ops.transpose(x, channels_first_permutation(ndim))

    def compute_output_shape(self, input_shape):
        inner = self.layer.compute_output_shape(_shape_to_channels_last(input_shape))
        return _shape_to_channels_first(inner)
