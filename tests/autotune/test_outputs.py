"""The outputs codec: what two configurations' answers look like side by side."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autotune.outputs import OutputsError, compare, encode_outputs, encode_scalars, labels_judged, weights_info

TRAINED = weights_info("trained", "abc123", "test weights")


def segmentation(seed: int = 0, shape=(2, 16, 16, 16, 3)) -> np.ndarray:
    """Sigmoid outputs far from 0.5, as trained weights give: a clear label map."""
    rng = np.random.default_rng(seed)
    logits = rng.choice([-6.0, 6.0], size=shape, p=[0.8, 0.2]) + rng.normal(0, 0.5, size=shape)
    return 1 / (1 + np.exp(-logits))


def test_same_outputs_agree_exactly() -> None:
    out = segmentation()
    figures = compare(encode_outputs(out, weights=TRAINED, labels="threshold"),
                      encode_outputs(out.copy(), weights=TRAINED, labels="threshold"))
    assert figures == {"max_abs_error": 0.0, "rel_l2_error": 0.0, "label_flip_share": 0.0, "dice": 1.0}


def test_rounding_gives_small_errors_and_wrong_labels_give_low_dice() -> None:
    out = segmentation()
    reference = encode_outputs(out, weights=TRAINED, labels="threshold")
    rounded = compare(encode_outputs(out.astype(np.float16), weights=TRAINED, labels="threshold"), reference)
    assert 0 < rounded["rel_l2_error"] < 1e-3
    assert rounded["dice"] > 0.999
    flipped = compare(encode_outputs(1 - out, weights=TRAINED, labels="threshold"), reference)
    assert flipped["dice"] < 0.1
    assert flipped["label_flip_share"] > 0.9


def test_dice_counts_the_whole_label_map_not_a_sample() -> None:
    out = segmentation(shape=(1, 32, 32, 32, 3))
    changed = out.copy()
    positive = np.flatnonzero(changed.reshape(-1) > 0.5)
    changed.reshape(-1)[positive[:10]] = 0.0  # 10 labels of many thousands
    figures = compare(encode_outputs(changed, weights=TRAINED, labels="threshold"),
                      encode_outputs(out, weights=TRAINED, labels="threshold"))
    total = out.size
    assert figures["label_flip_share"] == pytest.approx(10 / total)
    assert figures["dice"] == pytest.approx(2 * (len(positive) - 10) / (2 * len(positive) - 10))


def test_argmax_labels_count_changed_classes() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(64, 10))
    other = logits.copy()
    other[:8] = other[:8][:, ::-1]  # reorders the classes of 8 samples
    mine = encode_outputs(other, weights=weights_info("model", "m1"), labels="argmax")
    theirs = encode_outputs(logits, weights=weights_info("model", "m1"), labels="argmax")
    figures = compare(mine, theirs)
    assert "dice" not in figures
    assert 0 < figures["label_flip_share"] <= 8 / 64


def test_random_weights_judge_raw_outputs_only() -> None:
    out = segmentation()
    payload = encode_outputs(out, weights=weights_info("random"), labels="threshold")
    assert not labels_judged(payload)
    figures = compare(payload, encode_outputs(out, weights=weights_info("random"), labels="threshold"))
    assert set(figures) == {"max_abs_error", "rel_l2_error"}


def test_non_finite_outputs_are_infinitely_wrong() -> None:
    out = segmentation()
    broken = out.copy()
    broken[0, 0, 0, 0, 0] = np.nan
    figures = compare(encode_outputs(broken, weights=TRAINED), encode_outputs(out, weights=TRAINED))
    assert math.isinf(figures["rel_l2_error"])


def test_scalars_compare_relatively() -> None:
    figures = compare(encode_scalars({"loss": 0.51, "grad_norm": 2.0}, weights=TRAINED),
                      encode_scalars({"loss": 0.5, "grad_norm": 2.0}, weights=TRAINED))
    assert figures["loss_rel_error"] == pytest.approx(0.02)
    assert figures["grad_norm_rel_error"] == 0.0


@pytest.mark.parametrize(
    ("mine", "theirs", "message"),
    [
        ({"inputs_digest": "a"}, {"inputs_digest": "b"}, "check inputs differ"),
        ({"weights": weights_info("trained", "x")}, {"weights": weights_info("trained", "y")}, "weights differ"),
    ],
)
def test_payloads_of_other_inputs_or_weights_are_not_compared(mine, theirs, message) -> None:
    out = segmentation()
    kwargs = {"weights": TRAINED, "labels": "threshold"}
    with pytest.raises(OutputsError, match=message):
        compare(encode_outputs(out, **{**kwargs, **mine}), encode_outputs(out, **{**kwargs, **theirs}))


def test_shapes_and_kinds_must_match() -> None:
    with pytest.raises(OutputsError, match="shape"):
        compare(encode_outputs(segmentation(shape=(1, 8, 8, 8, 3)), weights=TRAINED),
                encode_outputs(segmentation(shape=(2, 8, 8, 8, 3)), weights=TRAINED))
    with pytest.raises(OutputsError, match="cannot compare"):
        compare(encode_scalars({"loss": 1.0}, weights=TRAINED), encode_outputs(segmentation(), weights=TRAINED))


def test_unknown_weight_and_label_kinds_are_refused() -> None:
    with pytest.raises(OutputsError):
        weights_info("pretrained")
    with pytest.raises(OutputsError):
        encode_outputs(segmentation(), weights=TRAINED, labels="softmax")
