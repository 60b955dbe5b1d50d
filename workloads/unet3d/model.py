"""The isensee2017 3D U-Net (Isensee et al., BraTS 2017) in Keras 3, in four tensor layouts.

Re-implemented from the workload spec after ``isensee2017_model`` of ellisdg/3DUnetCNN.
At the reference settings (4 input channels, 3 labels, 16 base filters, depth 5, 3 segmentation
levels) the model has 8,269,561 parameters (``REFERENCE_PARAMETER_COUNT``) and one forward pass of
one sample costs 44.11 GFLOP at 64^3 and 352.89 GFLOP at 128^3 (``forward_flops``).

Importing this module does not import Keras or TensorFlow: ``forward_flops``, ``parameter_count``
and ``input_layout`` are plain arithmetic, and ``build_unet3d`` imports Keras when called.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

LAYOUTS = ("channels_last", "cf_keras", "cf_per_layer", "cf_eliminated")
# How instance normalization is computed (``layers.instance_norm``): the same function every way.
NORMS = ("moments", "group_norm")
REFERENCE_PARAMETER_COUNT = 8_269_561

_CHANNELS_FIRST_LAYOUTS = frozenset({"cf_keras", "cf_per_layer", "cf_eliminated"})
_KERNEL = 3


def input_layout(layout: str) -> str:
    """The layout of the tensors a model built with ``layout`` takes and returns.

    Args:
        layout: One of ``LAYOUTS``.

    Returns:
        ``"channels_first"`` (``N, C, D, H, W``) or ``"channels_last"`` (``N, D, H, W, C``).

    Raises:
        ValueError: ``layout`` is not one of ``LAYOUTS``.
    """
    _check_layout(layout)
    return "channels_first" if layout in _CHANNELS_FIRST_LAYOUTS else "channels_last"


@dataclass(frozen=True)
class _Conv:
    """One Conv3D of the network, as the FLOP and parameter counts see it."""

    in_channels: int
    filters: int
    kernel: int
    level: int
    normalized: bool

    @property
    def parameters(self) -> int:
        norm = 2 * self.filters if self.normalized else 0
        return self.kernel**3 * self.in_channels * self.filters + self.filters + norm


def _convolutions(
    *, n_channels: int, n_labels: int, base_filters: int, depth: int, n_segmentation_levels: int
) -> Iterator[_Conv]:
    filters = [base_filters * 2**level for level in range(depth)]
    in_channels = n_channels
    for level in range(depth):
        yield _Conv(in_channels, filters[level], _KERNEL, level, normalized=True)
        yield _Conv(filters[level], filters[level], _KERNEL, level, normalized=True)
        yield _Conv(filters[level], filters[level], _KERNEL, level, normalized=True)
        in_channels = filters[level]
    for level in range(depth - 2, -1, -1):
        yield _Conv(in_channels, filters[level], _KERNEL, level, normalized=True)
        yield _Conv(2 * filters[level], filters[level], _KERNEL, level, normalized=True)
        yield _Conv(filters[level], filters[level], 1, level, normalized=True)
        if level < n_segmentation_levels:
            yield _Conv(filters[level], n_labels, 1, level, normalized=False)
        in_channels = filters[level]


def forward_flops(
    spatial_shape: tuple[int, int, int],
    *,
    n_channels: int = 4,
    n_labels: int = 3,
    base_filters: int = 16,
    depth: int = 5,
    n_segmentation_levels: int = 3,
) -> float:
    """FLOPs of one forward pass of one sample, from the architecture alone.

    Counts the convolutions only, 2 FLOPs per multiply-add, every output voxel at full kernel size
    (zero padding included); bias adds, normalization, activations, additions and up-sampling are
    left out (together about 1% of the total).

    Args:
        spatial_shape: ``(D, H, W)`` of the input volume.
        n_channels: Input channels.
        n_labels: Output channels.
        base_filters: Filters at the top level; level ``L`` has ``base_filters * 2**L``.
        depth: Number of encoder levels.
        n_segmentation_levels: Decoder levels with a segmentation output, clipped to
            ``depth - 1``.

    Returns:
        The FLOP count (44.11e9 at 64^3 with the defaults).

    Raises:
        ValueError: The configuration is not valid (see ``build_unet3d``).
    """
    _check_configuration(
        spatial_shape, n_channels, n_labels, base_filters, depth, n_segmentation_levels
    )
    voxels = math.prod(spatial_shape)
    total = 0
    for conv in _convolutions(
        n_channels=n_channels,
        n_labels=n_labels,
        base_filters=base_filters,
        depth=depth,
        n_segmentation_levels=min(n_segmentation_levels, depth - 1),
    ):
        total += 2 * conv.kernel**3 * conv.in_channels * conv.filters * voxels // 8**conv.level
    return float(total)


def parameter_count(
    *,
    n_channels: int = 4,
    n_labels: int = 3,
    base_filters: int = 16,
    depth: int = 5,
    n_segmentation_levels: int = 3,
) -> int:
    """Number of weights of the network, from the architecture alone.

    Each convolution has a kernel and a bias; each instance normalization a scale and an offset per
    channel. The count does not depend on the spatial shape or the layout.

    Args:
        n_channels: Input channels.
        n_labels: Output channels.
        base_filters: Filters at the top level.
        depth: Number of encoder levels.
        n_segmentation_levels: Decoder levels with a segmentation output, clipped to
            ``depth - 1``.

    Returns:
        The parameter count (``REFERENCE_PARAMETER_COUNT`` with the defaults).

    Raises:
        ValueError: The configuration is not valid (see ``build_unet3d``).
    """
    _check_configuration(None, n_channels, n_labels, base_filters, depth, n_segmentation_levels)
    return sum(
        conv.parameters
        for conv in _convolutions(
            n_channels=n_channels,
            n_labels=n_labels,
            base_filters=base_filters,
            depth=depth,
            n_segmentation_levels=min(n_segmentation_levels, depth - 1),
        )
    )


def build_unet3d(
    spatial_shape: tuple[int, int, int],
    *,
    layout: str = "cf_keras",
    n_channels: int = 4,
    n_labels: int = 3,
    base_filters: int = 16,
    depth: int = 5,
    dropout: float = 0.3,
    n_segmentation_levels: int = 3,
    negative_slope: float = 0.3,
    dtype_policy=None,
    norm: str = "moments",
) -> keras.Model:
    """Builds the isensee2017 3D U-Net.

    Every layout builds the same layers in the same order with the same weight shapes, so
    ``other.set_weights(model.get_weights())`` moves weights between layouts and both then compute
    the same function (inputs and outputs transposed between channels_first and channels_last):

    - ``"channels_last"``: input and output ``(N, D, H, W, C)``, every layer channels_last.
    - ``"cf_keras"``: input and output ``(N, C, D, H, W)``, every layer built channels_first and
      left to Keras (on TensorFlow/CPU it compiles channels_first Conv3D with XLA); only the
      convolution bias add is our own (``SafeBiasConv3D``: Keras 3's can pick the wrong axis).
    - ``"cf_per_layer"``: channels_first between layers, each Conv3D, instance normalization,
      spatial dropout and up-sampling wrapped as transpose -> channels_last layer -> transpose
      back (``ChannelsLastWrapper``), as Keras 2 did on CPU; add and concatenate act on axis 1.
    - ``"cf_eliminated"``: channels_first input and output, one transpose at entry and one before
      the final sigmoid, every layer channels_last in between.

    The final sigmoid is a float32 layer, so under a ``mixed_bfloat16`` policy the output is
    float32 while the body computes in bfloat16.

    Args:
        spatial_shape: ``(D, H, W)``; each must be divisible by ``2**(depth - 1)``.
        layout: One of ``LAYOUTS``.
        n_channels: Input channels (MRI modalities).
        n_labels: Output channels, one sigmoid map each.
        base_filters: Filters at the top level; level ``L`` has ``base_filters * 2**L``.
        depth: Number of encoder levels, at least 2.
        dropout: Rate of the spatial dropout in each context module.
        n_segmentation_levels: Number of decoder levels, counted from full resolution, whose
            segmentation maps are summed for deep supervision. Values above ``depth - 1`` (the
            number of decoder levels) are clipped to ``depth - 1``.
        negative_slope: Slope of the LeakyReLU for negative inputs.
        dtype_policy: Dtype policy for every layer but the final sigmoid; ``None`` uses the global
            policy (``keras.mixed_precision.set_global_policy``).
        norm: How instance normalization is computed (``layers.NORMS``): the same function and the
            same weights whichever.

    Returns:
        An uncompiled ``keras.Model`` named ``"isensee2017_<layout>"``.

    Raises:
        ValueError: Unknown layout or norm, non-positive sizes, ``depth < 2``,
            ``n_segmentation_levels < 1`` or a spatial size not divisible by ``2**(depth - 1)``.
    """
    _check_layout(layout)
    _check_configuration(
        spatial_shape, n_channels, n_labels, base_filters, depth, n_segmentation_levels
    )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    import keras

    from workloads.unet3d.layers import (
        ChannelsLastWrapper,
        SafeBiasConv3D,
        instance_norm,
        to_channels_first,
        to_channels_last,
    )

    n_segmentation_levels = min(n_segmentation_levels, depth - 1)
    layers = keras.layers
    data_format = "channels_first" if layout == "cf_keras" else "channels_last"
    norm_axis = 1 if layout == "cf_keras" else -1
    graph_channel_axis = 1 if layout in ("cf_keras", "cf_per_layer") else -1

    def spatial(layer, x):
        if layout == "cf_per_layer":
            return ChannelsLastWrapper(layer, dtype=dtype_policy)(x)
        return layer(x)

    def conv_block(x, filters, name, kernel=_KERNEL, strides=1):
        conv = SafeBiasConv3D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            data_format=data_format,
            dtype=dtype_policy,
            name=f"{name}_conv",
        )
        x = spatial(conv, x)
        x = spatial(instance_norm(norm, norm_axis, filters, dtype=dtype_policy, name=f"{name}_norm"), x)
        return layers.LeakyReLU(negative_slope, dtype=dtype_policy, name=f"{name}_act")(x)

    def upsample(x, name):
        up = layers.UpSampling3D(2, data_format=data_format, dtype=dtype_policy, name=name)
        return spatial(up, x)

    if input_layout(layout) == "channels_first":
        inputs = keras.Input((n_channels, *spatial_shape), name="image")
    else:
        inputs = keras.Input((*spatial_shape, n_channels), name="image")
    x = inputs
    if layout == "cf_eliminated":
        x = to_channels_last(dtype=dtype_policy)(x)

    filters = [base_filters * 2**level for level in range(depth)]
    level_outputs = []
    for level in range(depth):
        name = f"encoder{level}"
        block_in = conv_block(x, filters[level], f"{name}_in", strides=1 if level == 0 else 2)
        context = conv_block(block_in, filters[level], f"{name}_context1")
        drop = layers.SpatialDropout3D(
            dropout, data_format=data_format, dtype=dtype_policy, name=f"{name}_context_dropout"
        )
        context = spatial(drop, context)
        context = conv_block(context, filters[level], f"{name}_context2")
        x = layers.Add(dtype=dtype_policy, name=f"{name}_add")([block_in, context])
        level_outputs.append(x)

    segmentations = {}
    for level in range(depth - 2, -1, -1):
        name = f"decoder{level}"
        up = conv_block(upsample(x, f"{name}_upsample"), filters[level], f"{name}_up")
        x = layers.Concatenate(axis=graph_channel_axis, dtype=dtype_policy, name=f"{name}_concat")(
            [level_outputs[level], up]
        )
        x = conv_block(x, filters[level], f"{name}_localization1")
        x = conv_block(x, filters[level], f"{name}_localization2", kernel=1)
        if level < n_segmentation_levels:
            seg = SafeBiasConv3D(
                n_labels,
                1,
                data_format=data_format,
                dtype=dtype_policy,
                name=f"{name}_segmentation",
            )
            segmentations[level] = spatial(seg, x)

    y = None
    for level in range(n_segmentation_levels - 1, -1, -1):
        if y is None:
            y = segmentations[level]
        else:
            y = layers.Add(dtype=dtype_policy, name=f"supervision{level}_add")(
                [y, segmentations[level]]
            )
        if level > 0:
            y = upsample(y, f"supervision{level}_upsample")
    if layout == "cf_eliminated":
        y = to_channels_first(dtype=dtype_policy)(y)
    outputs = layers.Activation("sigmoid", dtype="float32", name="sigmoid")(y)
    return keras.Model(inputs, outputs, name=f"isensee2017_{layout}")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def _check_configuration(
    spatial_shape: tuple[int, int, int] | None,
    n_channels: int,
    n_labels: int,
    base_filters: int,
    depth: int,
    n_segmentation_levels: int,
) -> None:
    for label, value in (
        ("n_channels", n_channels),
        ("n_labels", n_labels),
        ("base_filters", base_filters),
        ("n_segmentation_levels", n_segmentation_levels),
    ):
        if value < 1:
            raise ValueError(f"{label} must be at least 1, got {value}")
    if depth < 2:
        raise ValueError(f"depth must be at least 2, got {depth}")
    if spatial_shape is None:
        return
    factor = 2 ** (depth - 1)
    if len(spatial_shape) != 3 or any(size < 1 or size % factor for size in spatial_shape):
        raise ValueError(
            f"spatial_shape must be three sizes divisible by 2**(depth - 1) = {factor}, "
            f"got {tuple(spatial_shape)}"
        )
