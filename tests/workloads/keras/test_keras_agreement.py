"""The keras workload's check outputs: fixed inputs and the file's weights, labels from the output layer,
the same answer twice, another answer in bfloat16; trials run as real children through the runner."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autotune.outputs import compare, labels_judged
from autotune.protocol import Outcome, TrialConfig, TrialResult
from autotune.runner import TrialRunner, TrialSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    import keras_models

    folder = tmp_path_factory.mktemp("agreement")
    return {"sigmoid": keras_models.head(folder, "sigmoid", name="sigmoid"), "noisy": keras_models.noisy(folder)}


def trial(model: Path, *, outputs: bool = True, **params: Any) -> TrialResult:
    config = TrialConfig("keras", {"model": str(model), "batch": 4, "warmup": 0, "steps": 1, **params},
                         outputs=outputs)
    done = TrialRunner().run(TrialSpec(module="workloads.keras", config=config, timeout_s=300))
    assert done.outcome is Outcome.OK, done.reason + done.stderr_tail[-2000:]
    assert done.result is not None
    return done.result


# --- in process: the rules ------------------------------------------------------------------------

def test_labels_follow_the_output_activation():
    import keras

    from workloads.keras.agreement import label_kind

    def head(*layers: Any) -> keras.Model:
        return keras.Sequential([keras.Input((4,)), *layers])

    assert label_kind(keras, head(keras.layers.Dense(3, activation="sigmoid"))) == "threshold"
    assert label_kind(keras, head(keras.layers.Dense(3, activation="softmax"))) == "argmax"
    assert label_kind(keras, head(keras.layers.Dense(3), keras.layers.Softmax())) == "argmax"
    assert label_kind(keras, head(keras.layers.Dense(3), keras.layers.Activation("sigmoid"))) == "threshold"
    assert label_kind(keras, head(keras.layers.Dense(3))) is None
    assert label_kind(keras, head(keras.layers.Dense(3, activation="relu"))) is None


def test_several_outputs_are_raw_values_concatenated_without_labels():
    import keras_models

    from workloads.keras.agreement import infer_payload, label_kind

    model = keras_models.two_outputs()
    import keras

    assert label_kind(keras, model) is None
    x = np.ones((5, 6), dtype=np.float32)
    payload = infer_payload(model, x, labels="argmax", weights={"kind": "model", "digest": "d", "label": "w"},
                            inputs_digest="i")
    assert payload["shape"] == [5 * 3 + 5 * 2] and not labels_judged(payload)


def test_random_training_layers_are_switched_off(models):
    import keras

    from workloads.keras.agreement import switch_off_randomness

    model = keras.saving.load_model(models["noisy"], compile=False)
    x = np.random.default_rng(0).standard_normal((8, 5, 4)).astype(np.float32)
    assert not np.array_equal(model(x, training=True), model(x, training=True))
    changed = switch_off_randomness(keras, model)
    assert {name.split(".")[1] for name in changed} >= {"rate", "stddev", "dropout", "recurrent_dropout"}
    first = np.asarray(model(x, training=True))
    assert np.array_equal(first, np.asarray(model(x, training=True)))
    assert switch_off_randomness(keras, model) == []


# --- real trials ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inference(models) -> dict[str, TrialResult]:
    return {
        "reference": trial(models["sigmoid"]),
        "again": trial(models["sigmoid"]),
        "bfloat16": trial(models["sigmoid"], precision="mixed_bfloat16"),
        "untrained": trial(models["sigmoid"], untrained=True, seed=7),
        "unasked": trial(models["sigmoid"], outputs=False),
    }


def test_outputs_are_sent_only_when_asked(inference):
    assert inference["unasked"].outputs == {} and "check_seconds" not in inference["unasked"].figures
    reference = inference["reference"]
    assert reference.outputs["kind"] == "outputs" and reference.outputs["shape"] == [4, 4]
    assert reference.figures["check_seconds"] > 0


def test_the_file_weights_and_a_sigmoid_head_judge_thresholded_labels(inference):
    reference = inference["reference"].outputs
    assert reference["weights"]["kind"] == "model"
    assert reference["weights"]["label"] == "weights of sigmoid.keras"
    assert reference["labels"] == "threshold" and labels_judged(reference)


def test_the_same_configuration_agrees_exactly(inference):
    figures = compare(inference["again"].outputs, inference["reference"].outputs)
    assert figures["max_abs_error"] == 0.0 and figures["label_flip_share"] == 0.0 and figures["dice"] == 1.0


def test_bfloat16_differs_by_rounding(inference):
    figures = compare(inference["bfloat16"].outputs, inference["reference"].outputs)
    assert 0 < figures["rel_l2_error"] < 0.05 and 0 < figures["max_abs_error"] < 0.05


def test_untrained_weights_judge_raw_outputs_only_and_inputs_ignore_the_seed(inference):
    untrained, reference = inference["untrained"].outputs, inference["reference"].outputs
    assert untrained["weights"]["kind"] == "random" and not labels_judged(untrained)
    assert untrained["inputs"] == reference["inputs"]
    assert untrained["weights"]["digest"] == reference["weights"]["digest"]


def test_training_compares_the_first_step_with_dropout_off(models):
    reference, again = trial(models["noisy"], mode="train"), trial(models["noisy"], mode="train", steps=3)
    bfloat16 = trial(models["noisy"], mode="train", precision="mixed_bfloat16")
    assert reference.outputs["kind"] == "scalars" and set(reference.outputs["values"]) == {"loss", "grad_norm"}
    # Dropout draws differ between processes and the steps changed the weights: the check sees neither.
    assert compare(again.outputs, reference.outputs) == {"grad_norm_rel_error": 0.0, "loss_rel_error": 0.0}
    figures = compare(bfloat16.outputs, reference.outputs)
    assert 0 < max(figures.values()) < 0.05
