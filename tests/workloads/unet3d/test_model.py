from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from workloads.unet3d.layers import ChannelsLastWrapper, InstanceNormalization, SafeBiasConv3D
from workloads.unet3d.model import (
    LAYOUTS,
    REFERENCE_PARAMETER_COUNT,
    build_unet3d,
    forward_flops,
    input_layout,
    parameter_count,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
TINY = {"n_channels": 4, "n_labels": 3, "base_filters": 4, "depth": 3}
TINY_SPATIAL = (8, 12, 16)
BATCH = 2
SMALLEST = {
    "n_channels": 1,
    "n_labels": 1,
    "base_filters": 2,
    "depth": 2,
    "n_segmentation_levels": 1,
}


def _to_layout(x_channels_last, layout):
    if input_layout(layout) == "channels_first":
        return np.moveaxis(x_channels_last, -1, 1)
    return x_channels_last


def _to_channels_last(y, layout):
    if input_layout(layout) == "channels_first":
        return np.moveaxis(y, 1, -1)
    return y


def _perturbed_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.get_weights():
        if w.ndim == 1:
            w = w + 0.1 * rng.standard_normal(w.shape).astype(w.dtype)
        weights.append(w)
    return weights


@pytest.fixture(scope="module")
def tiny_models():
    return {layout: build_unet3d(TINY_SPATIAL, layout=layout, **TINY) for layout in LAYOUTS}


@pytest.fixture(scope="module")
def tiny_input():
    rng = np.random.default_rng(1)
    return rng.standard_normal((BATCH, *TINY_SPATIAL, TINY["n_channels"])).astype(np.float32)


@pytest.fixture
def mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_input_and_output_shapes_follow_the_layout(tiny_models, tiny_input, layout):
    model = tiny_models[layout]
    if input_layout(layout) == "channels_first":
        assert tuple(model.input.shape) == (None, TINY["n_channels"], *TINY_SPATIAL)
        expected = (BATCH, TINY["n_labels"], *TINY_SPATIAL)
    else:
        assert tuple(model.input.shape) == (None, *TINY_SPATIAL, TINY["n_channels"])
        expected = (BATCH, *TINY_SPATIAL, TINY["n_labels"])
    y = model(_to_layout(tiny_input, layout), training=False)
    assert tuple(y.shape) == expected
    assert y.dtype == "float32"
    assert np.all((y.numpy() > 0) & (y.numpy() < 1))


def test_input_layout_names_the_tensor_layout():
    assert input_layout("channels_last") == "channels_last"
    for layout in ("cf_keras", "cf_per_layer", "cf_eliminated"):
        assert input_layout(layout) == "channels_first"
    with pytest.raises(ValueError, match="unknown layout"):
        input_layout("channels_middle")


def test_layouts_compute_the_same_function(tiny_models, tiny_input):
    reference = tiny_models["channels_last"]
    weights = _perturbed_weights(reference)
    reference.set_weights(weights)
    expected = reference(tiny_input, training=False).numpy()
    assert expected.std() > 0.01
    for layout in ("cf_keras", "cf_per_layer", "cf_eliminated"):
        model = tiny_models[layout]
        model.set_weights(weights)
        y = model(_to_layout(tiny_input, layout), training=False).numpy()
        np.testing.assert_allclose(
            _to_channels_last(y, layout), expected, rtol=1e-4, atol=1e-4, err_msg=layout
        )


def test_layouts_share_weight_shapes_and_names(tiny_models):
    reference = [(w.path, tuple(w.shape)) for w in tiny_models["channels_last"].weights]
    for layout in LAYOUTS:
        weights = [(w.path, tuple(w.shape)) for w in tiny_models[layout].weights]
        assert [shape for _, shape in weights] == [shape for _, shape in reference], layout
        names = [path.split("/")[-2:] for path, _ in weights]
        assert names == [path.split("/")[-2:] for path, _ in reference], layout


def test_cf_per_layer_wraps_every_spatial_layer(tiny_models):
    model = tiny_models["cf_per_layer"]
    wrapped = [layer.layer for layer in model.layers if isinstance(layer, ChannelsLastWrapper)]
    assert not any(
        isinstance(layer, keras.layers.Conv3D | InstanceNormalization) for layer in model.layers
    )
    kinds = {type(layer) for layer in wrapped}
    assert kinds == {
        SafeBiasConv3D,
        InstanceNormalization,
        keras.layers.SpatialDropout3D,
        keras.layers.UpSampling3D,
    }
    assert all(
        getattr(layer, "data_format", "channels_last") == "channels_last" for layer in wrapped
    )


def test_cf_eliminated_transposes_only_at_entry_and_exit(tiny_models):
    model = tiny_models["cf_eliminated"]
    permutes = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Permute)]
    assert permutes == ["to_channels_last", "to_channels_first"]
    assert all(
        layer.data_format == "channels_last"
        for layer in model.layers
        if hasattr(layer, "data_format") and not isinstance(layer, keras.layers.Permute)
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_weight_gets_a_finite_gradient(tiny_models, tiny_input, layout):
    model = tiny_models[layout]
    x = tf.constant(_to_layout(tiny_input, layout))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    assert len(gradients) == len(model.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in gradients)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_parameter_count_matches_the_analytic_formula(tiny_models, layout):
    assert tiny_models[layout].count_params() == parameter_count(**TINY)


def test_parameter_count_of_the_smallest_network_by_hand():
    def block(k, c_in, c_out):
        return k**3 * c_in * c_out + c_out + 2 * c_out

    by_hand = (
        block(3, 1, 2)
        + 2 * block(3, 2, 2)
        + block(3, 2, 4)
        + 2 * block(3, 4, 4)
        + block(3, 4, 2)
        + block(3, 4, 2)
        + block(1, 2, 2)
        + (2 * 1 + 1)
    )
    assert by_hand == 1861
    assert parameter_count(**SMALLEST) == by_hand
    assert build_unet3d((4, 4, 4), layout="channels_last", **SMALLEST).count_params() == by_hand


def test_reference_parameter_count():
    model = build_unet3d((16, 16, 16), layout="channels_last")
    assert model.count_params() == REFERENCE_PARAMETER_COUNT == 8_269_561
    assert parameter_count() == REFERENCE_PARAMETER_COUNT


def test_segmentation_levels_are_clipped_to_the_decoder_depth():
    assert parameter_count(**{**TINY, "n_segmentation_levels": 9}) == parameter_count(
        **{**TINY, "n_segmentation_levels": 2}
    )
    assert forward_flops((4, 4, 4), **{**SMALLEST, "n_segmentation_levels": 3}) == forward_flops(
        (4, 4, 4), **SMALLEST
    )
    model = build_unet3d(
        (4, 4, 4), layout="channels_last", **{**SMALLEST, "n_segmentation_levels": 3}
    )
    assert model.count_params() == parameter_count(**SMALLEST)


def test_forward_flops_of_the_smallest_network_by_hand():
    voxels, coarse = 4**3, 2**3
    multiply_adds = (
        27 * 1 * 2 * voxels
        + 2 * 27 * 2 * 2 * voxels
        + 27 * 2 * 4 * coarse
        + 2 * 27 * 4 * 4 * coarse
        + 27 * 4 * 2 * voxels
        + 27 * 4 * 2 * voxels
        + 2 * 2 * voxels
        + 2 * 1 * voxels
    )
    assert multiply_adds == 53_952
    assert forward_flops((4, 4, 4), **SMALLEST) == 2 * multiply_adds


def test_forward_flops_matches_the_built_convolutions(tiny_models):
    total = 0
    for layer in tiny_models["channels_last"].layers:
        if isinstance(layer, keras.layers.Conv3D):
            output_voxels = math.prod(layer.output.shape[1:4])
            total += 2 * math.prod(layer.kernel.shape) * output_voxels
    assert forward_flops(TINY_SPATIAL, **TINY) == total


def test_reference_forward_flops():
    at_64 = forward_flops((64, 64, 64))
    assert at_64 == 44_110_970_880
    assert forward_flops((128, 128, 128)) == 8 * at_64
    assert forward_flops((64, 64, 64), n_labels=4) > at_64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layout": "nchw"}, "unknown layout"),
        ({"depth": 1}, "depth"),
        ({"base_filters": 0}, "base_filters"),
        ({"n_segmentation_levels": 0}, "n_segmentation_levels"),
        ({"dropout": 1.0}, "dropout"),
        ({"spatial_shape": (8, 8, 6)}, "divisible"),
        ({"spatial_shape": (8, 8)}, "divisible"),
        ({"norm": "batch"}, "unknown instance normalization"),
    ],
)
def test_invalid_configurations_are_rejected(change, message):
    arguments = {"spatial_shape": (8, 8, 8), **TINY, **change}
    with pytest.raises(ValueError, match=message):
        build_unet3d(**arguments)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mixed_bfloat16_computes_in_bfloat16_and_returns_float32(
    mixed_bfloat16, tiny_models, tiny_input, layout
):
    model = build_unet3d(TINY_SPATIAL, layout=layout, **TINY)
    model.set_weights(tiny_models[layout].get_weights())
    convs = [
        layer.layer if isinstance(layer, ChannelsLastWrapper) else layer
        for layer in model.layers
        if isinstance(getattr(layer, "layer", layer), keras.layers.Conv3D)
    ]
    assert convs
    assert all(conv.compute_dtype == "bfloat16" for conv in convs)
    assert all(w.dtype == "float32" for w in model.weights)
    x = _to_layout(tiny_input, layout)
    y = model(x, training=False)
    assert y.dtype == "float32"
    expected = tiny_models[layout](x, training=False).numpy()
    np.testing.assert_allclose(y.numpy(), expected, atol=0.1)


def test_dtype_policy_argument_applies_without_a_global_policy(tiny_input):
    model = build_unet3d(
        TINY_SPATIAL, layout="channels_last", dtype_policy="mixed_bfloat16", **TINY
    )
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.get_layer("encoder0_in_conv").compute_dtype == "bfloat16"
    assert model(tiny_input, training=False).dtype == "float32"


@pytest.mark.parametrize("strides", [1, 2])
def test_channels_first_conv_adds_the_bias_on_the_channel_axis(strides):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 6, 4, 2 * 4)).astype(np.float32)
    filters = x.shape[3] // strides
    last = SafeBiasConv3D(filters, 3, strides=strides, padding="same")
    first = SafeBiasConv3D(
        filters, 3, strides=strides, padding="same", data_format="channels_first"
    )
    last.build(x.shape)
    first.build(np.moveaxis(x, -1, 1).shape)
    kernel = rng.standard_normal(last.kernel.shape).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    last.set_weights([kernel, bias])
    first.set_weights([kernel, bias])
    y_first = first(np.moveaxis(x, -1, 1)).numpy()
    assert y_first.shape[1] == y_first.shape[-1] == filters
    np.testing.assert_allclose(np.moveaxis(y_first, 1, -1), last(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [1, -1])
def test_instance_normalization_matches_numpy(axis):
    rng = np.random.default_rng(2)
    x = (3.0 + 2.0 * rng.standard_normal((2, 3, 4, 5, 6))).astype(np.float32)
    layer = InstanceNormalization(axis=axis)
    layer.build(x.shape)
    channels = x.shape[axis]
    gamma = rng.standard_normal(channels).astype(np.float32)
    beta = rng.standard_normal(channels).astype(np.float32)
    layer.set_weights([gamma, beta])
    moved = np.moveaxis(x, axis, 1).astype(np.float64)
    mean = moved.mean(axis=(2, 3, 4), keepdims=True)
    variance = moved.var(axis=(2, 3, 4), keepdims=True)
    shape = (1, channels, 1, 1, 1)
    normed = (moved - mean) / np.sqrt(variance + layer.epsilon)
    expected = np.moveaxis(normed * gamma.reshape(shape) + beta.reshape(shape), 1, axis)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_instance_normalization_defaults_and_config_round_trip():
    layer = InstanceNormalization(axis=1, epsilon=1e-3, name="norm")
    layer.build((None, 2, 4, 4, 4))
    np.testing.assert_array_equal(layer.gamma.numpy(), np.ones(2))
    np.testing.assert_array_equal(layer.beta.numpy(), np.zeros(2))
    clone = InstanceNormalization.from_config(layer.get_config())
    assert (clone.axis, clone.epsilon, clone.name) == (1, 1e-3, "norm")
    assert InstanceNormalization().epsilon == 1e-5


def test_model_module_imports_without_tensorflow():
    code = (
        "import sys, workloads.unet3d.model as m; "
        "m.forward_flops((64, 64, 64)); m.parameter_count(); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


@pytest.mark.parametrize("layout", ["channels_last", "cf_per_layer"])
def test_group_norm_is_the_same_function_with_the_same_weights(tiny_input, layout):
    model = build_unet3d(TINY_SPATIAL, layout=layout, norm="group_norm", **TINY)
    reference = build_unet3d(TINY_SPATIAL, layout=layout, **TINY)
    weights = _perturbed_weights(reference, seed=3)
    reference.set_weights(weights)
    model.set_weights(weights)  # the same weight list: gamma then beta per normalization
    assert any(isinstance(getattr(layer, "layer", layer), keras.layers.GroupNormalization) for layer in model.layers)
    x = _to_layout(tiny_input, layout)
    np.testing.assert_allclose(model(x, training=False), reference(x, training=False), rtol=1e-4, atol=1e-5)
