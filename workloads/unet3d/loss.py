"""The weighted Dice loss of the reference run (``weighted_dice_coefficient``, ellisdg/3DUnetCNN).

For each sample and label channel, ``(2 * sum(t * p) + smooth) / (sum(t) + sum(p) + smooth)``
with the sums over the three spatial axes; the coefficient is the mean over samples and channels,
and the loss is its negative. Both are written with ``keras.ops`` and run in TensorFlow graphs.
They take a keyword-only ``channel_axis``: bind it (``functools.partial``) before handing them to
``compile``.
"""

from __future__ import annotations

from keras import ops

DEFAULT_SMOOTH = 1e-5


def weighted_dice_coefficient(y_true, y_pred, *, channel_axis: int, smooth: float = DEFAULT_SMOOTH):
    """Dice coefficient averaged over samples and label channels.

    Both tensors are cast to float32 before summing, so bfloat16 predictions and integer masks
    are summed at full precision.

    Args:
        y_true: Binary target maps, ``(N, C, D, H, W)`` or ``(N, D, H, W, C)``.
        y_pred: Predicted probabilities, same shape as ``y_true``.
        channel_axis: The label axis: 1 for channels_first, -1 (or 4) for channels_last.
        smooth: Added to numerator and denominator; keeps empty maps at coefficient 1.

    Returns:
        A float32 scalar in ``[0, 1]``; 1 for a perfect prediction.

    Raises:
        ValueError: ``channel_axis`` is the batch axis or outside the tensor's rank.
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    ndim = len(y_pred.shape)
    if not -ndim <= channel_axis < ndim or channel_axis % ndim == 0:
        raise ValueError(
            f"channel_axis {channel_axis} is not a non-batch axis of a rank-{ndim} tensor"
        )
    spatial_axes = tuple(i for i in range(1, ndim) if i != channel_axis % ndim)
    intersection = ops.sum(y_true * y_pred, axis=spatial_axes)
    total = ops.sum(y_true, axis=spatial_axes) + ops.sum(y_pred, axis=spatial_axes)
    return ops.mean((2.0 * intersection + smooth) / (total + smooth))


def weighted_dice_coefficient_loss(
    y_true, y_pred, *, channel_axis: int, smooth: float = DEFAULT_SMOOTH
):
    """Negative of ``weighted_dice_coefficient``: -1 for a perfect prediction, near 0 for none.

    Args:
        y_true: Binary target maps, ``(N, C, D, H, W)`` or ``(N, D, H, W, C)``.
        y_pred: Predicted probabilities, same shape as ``y_true``.
        channel_axis: The label axis: 1 for channels_first, -1 (or 4) for channels_last.
        smooth: Added to numerator and denominator.

    Returns:
        A float32 scalar in ``[-1, 0]``.
    """
    return -weighted_dice_coefficient(y_true, y_pred, channel_axis=channel_axis, smooth=smooth)
