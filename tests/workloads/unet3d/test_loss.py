from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from workloads.unet3d.loss import weighted_dice_coefficient, weighted_dice_coefficient_loss

SMOOTH = 1e-5


def _numpy_dice(y_true, y_pred, channel_axis, smooth=SMOOTH):
    y_true = np.moveaxis(y_true, channel_axis, 1).astype(np.float64)
    y_pred = np.moveaxis(y_pred, channel_axis, 1).astype(np.float64)
    intersection = (y_true * y_pred).sum(axis=(2, 3, 4))
    total = y_true.sum(axis=(2, 3, 4)) + y_pred.sum(axis=(2, 3, 4))
    return float(((2 * intersection + smooth) / (total + smooth)).mean())


@pytest.fixture
def masks():
    rng = np.random.default_rng(0)
    y_true = (rng.random((2, 3, 4, 5, 6)) > 0.6).astype(np.float32)
    y_pred = rng.random((2, 3, 4, 5, 6)).astype(np.float32)
    return y_true, y_pred


def test_perfect_prediction_gives_minus_one(masks):
    y_true, _ = masks
    loss = weighted_dice_coefficient_loss(y_true, y_true, channel_axis=1)
    assert float(loss) == pytest.approx(-1.0, abs=1e-6)


def test_disjoint_prediction_gives_about_zero(masks):
    y_true, _ = masks
    loss = weighted_dice_coefficient_loss(y_true, 1.0 - y_true, channel_axis=1)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_empty_maps_count_as_perfect():
    empty = np.zeros((1, 2, 2, 2, 2), np.float32)
    assert float(weighted_dice_coefficient(empty, empty, channel_axis=1)) == pytest.approx(1.0)


def test_hand_computed_partial_overlap():
    y_true = np.zeros((2, 2, 2, 2, 2), np.float32)
    y_pred = np.zeros((2, 2, 2, 2, 2), np.float32)
    y_true[0, 0, 0, 0, :] = 1.0
    y_pred[0, 0, 0, 0, :] = (1.0, 0.5)
    y_pred[0, 0, 1, 1, 1] = 0.5
    y_true[1, 0, 0, 0, 0] = 1.0
    y_pred[1, 0, 0, 0, 0] = 0.25
    y_pred[1, 0, 1, 0, 0] = 0.75
    y_true[1, 1] = 1.0
    y_pred[1, 1] = 1.0
    sample0 = [(2 * 1.5 + SMOOTH) / (2 + 2 + SMOOTH), 1.0]
    sample1 = [(2 * 0.25 + SMOOTH) / (1 + 1 + SMOOTH), 1.0]
    expected = np.mean(sample0 + sample1)
    assert expected == pytest.approx(0.75, abs=1e-5)
    coefficient = weighted_dice_coefficient(y_true, y_pred, channel_axis=1)
    assert float(coefficient) == pytest.approx(expected, rel=1e-6)
    loss = weighted_dice_coefficient_loss(y_true, y_pred, channel_axis=1)
    assert float(loss) == pytest.approx(-expected, rel=1e-6)


def test_matches_numpy_reference(masks):
    y_true, y_pred = masks
    coefficient = weighted_dice_coefficient(y_true, y_pred, channel_axis=1)
    assert float(coefficient) == pytest.approx(_numpy_dice(y_true, y_pred, 1), rel=1e-5)


@pytest.mark.parametrize("channel_axis", [-1, 4])
def test_channels_last_equals_channels_first(masks, channel_axis):
    y_true, y_pred = masks
    first = weighted_dice_coefficient_loss(y_true, y_pred, channel_axis=1)
    last = weighted_dice_coefficient_loss(
        np.moveaxis(y_true, 1, -1), np.moveaxis(y_pred, 1, -1), channel_axis=channel_axis
    )
    assert float(last) == pytest.approx(float(first), rel=1e-6)


def test_channel_axis_decides_the_average(masks):
    y_true, y_pred = masks
    wrong_axis = weighted_dice_coefficient(y_true, y_pred, channel_axis=-1)
    assert float(wrong_axis) == pytest.approx(_numpy_dice(y_true, y_pred, -1), rel=1e-5)
    assert float(wrong_axis) != pytest.approx(_numpy_dice(y_true, y_pred, 1), rel=1e-3)


def test_runs_in_a_graph_with_bfloat16_predictions_and_has_gradients(masks):
    y_true, y_pred = masks
    y_pred = tf.Variable(tf.cast(y_pred, tf.bfloat16))

    @tf.function
    def loss_and_gradient():
        with tf.GradientTape() as tape:
            loss = weighted_dice_coefficient_loss(tf.constant(y_true), y_pred, channel_axis=1)
        return loss, tape.gradient(loss, y_pred)

    loss, gradient = loss_and_gradient()
    assert loss.dtype == tf.float32
    expected = -_numpy_dice(y_true, y_pred.numpy().astype(np.float32), 1)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert gradient is not None
    assert np.all(np.isfinite(gradient.numpy().astype(np.float32)))


@pytest.mark.parametrize("channel_axis", [0, 5, -6])
def test_rejects_axes_that_are_not_channel_axes(masks, channel_axis):
    y_true, y_pred = masks
    with pytest.raises(ValueError, match="channel_axis"):
        weighted_dice_coefficient(y_true, y_pred, channel_axis=channel_axis)
