"""The unet3d output check: check weights trained and cached by --prepare, payloads of real trials.

Every run is a real child process of a tiny U-Net; the weights recipe is shrunk through
``AUTOTUNE_UNET3D_WEIGHTS_RECIPE`` (the product recipe is :data:`workloads.unet3d.weights.RECIPE`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.outputs import compare, labels_judged
from autotune.protocol import LINE_PREFIX, TrialConfig
from workloads.harness import BadInput

TINY = {"patch": "16", "base_filters": 2, "depth": 3, "image_size": 32, "steps": 1, "warmup": 0,
        "data_format": "channels_last"}
TINY_RECIPE = {"steps": 4, "patch": 16, "batch": 1, "image_size": 32}
CF_KERAS = {"data_format": "channels_first"}
CF_ELIMINATED = {"data_format": "channels_first", "transpose_elimination": True}


def child(folder: Path, cache: Path, params: dict, *flags: str, outputs: bool = True) -> tuple[int, list[dict], str]:
    """Run the workload child; return its exit status, protocol messages and stderr."""
    config = folder / "config.json"
    config.write_text(TrialConfig("unet3d", {**TINY, **params}, outputs=outputs).to_json())
    env = {**os.environ, "AUTOTUNE_CACHE": str(cache), "AUTOTUNE_UNET3D_WEIGHTS_RECIPE": json.dumps(TINY_RECIPE)}
    done = subprocess.run([sys.executable, "-m", "workloads.unet3d", "--config", str(config), *flags],
                          capture_output=True, text=True, env=env, timeout=180, cwd=folder)
    messages = [json.loads(line[len(LINE_PREFIX):]) for line in done.stdout.splitlines()
                if line.startswith(LINE_PREFIX)]
    return done.returncode, messages, done.stderr


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def prepared(cache, tmp_path_factory) -> tuple[dict, dict]:
    """Two --prepare runs: the first trains, the second finds the cached weights."""
    folder = tmp_path_factory.mktemp("prepare")
    runs = []
    for _ in range(2):
        status, messages, stderr = child(folder, cache, {}, "--prepare")
        assert status == 0, stderr[-2000:]
        runs.append(messages[-1])
    return runs[0], runs[1]


@pytest.fixture(scope="module")
def trials(prepared, cache, tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("trials")
    configs = {
        "reference": {}, "cf_keras": CF_KERAS, "bf16": {"precision": "mixed_bfloat16"},
        "train": {"mode": "train"}, "train_cf_eliminated": {"mode": "train", **CF_ELIMINATED},
        "group_norm": {"instance_norm": "group_norm"},
    }
    found = {}
    for name, params in configs.items():
        status, messages, stderr = child(folder, cache, params)
        assert status == 0, stderr[-2000:]
        assert messages[-1]["kind"] == "result"
        found[name] = messages[-1]
    return found


@pytest.mark.tf
def test_prepare_trains_once_and_caches(prepared, cache):
    first, second = prepared
    assert first["kind"] == second["kind"] == "prepared"
    assert first["trained"] is True and second["trained"] is False
    assert first["train_seconds"] > 0 and first["seconds"] >= first["train_seconds"]
    path = Path(first["path"])
    assert path.is_file() and path.parent == cache / "unet3d-weights" and path.name.endswith(".weights.h5")
    assert first["weights"]["kind"] == "trained" and "4 steps at patch 16" in first["weights"]["label"]
    assert second["weights"] == first["weights"]
    assert not list(path.parent.glob(".*.weights.h5"))  # no temporary file left behind


@pytest.mark.tf
def test_every_trial_checks_with_the_prepared_weights(prepared, trials):
    digest = prepared[0]["weights"]["digest"]
    for record in trials.values():
        assert record["outputs"]["weights"]["digest"] == digest
        assert record["figures"]["check_seconds"] > 0
        assert record["effective"]["check_seconds"] == record["figures"]["check_seconds"]


@pytest.mark.tf
def test_a_layout_agrees_to_rounding_and_bfloat16_does_not(trials):
    reference = trials["reference"]["outputs"]
    assert reference["kind"] == "outputs" and labels_judged(reference)
    assert reference["shape"] == [1, 16, 16, 16, 3]
    same = compare(trials["cf_keras"]["outputs"], reference)
    assert same["max_abs_error"] < 1e-5 and same["rel_l2_error"] < 1e-5
    assert same["label_flip_share"] < 1e-3
    assert compare(reference, reference) == {"max_abs_error": 0.0, "rel_l2_error": 0.0, "dice": 1.0,
                                             "label_flip_share": 0.0}
    bf16 = compare(trials["bf16"]["outputs"], reference)
    assert bf16["max_abs_error"] > 1e-4 and bf16["rel_l2_error"] > same["rel_l2_error"]


@pytest.mark.tf
def test_group_norm_computes_the_same_function(trials):
    found = compare(trials["group_norm"]["outputs"], trials["reference"]["outputs"])
    assert found["max_abs_error"] < 1e-5 and found["label_flip_share"] < 1e-3, found
    assert trials["group_norm"]["effective"]["instance_norm"] == "group_norm"


@pytest.mark.tf
def test_train_mode_sends_the_first_steps_loss_and_gradient_norm(trials):
    reference, other = trials["train"]["outputs"], trials["train_cf_eliminated"]["outputs"]
    assert reference["kind"] == "scalars" and set(reference["values"]) == {"loss", "grad_norm"}
    assert -1 <= reference["values"]["loss"] < 0 and reference["values"]["grad_norm"] > 0
    figures = compare(other, reference)
    assert figures["loss_rel_error"] < 1e-5 and figures["grad_norm_rel_error"] < 1e-4


@pytest.mark.tf
def test_missing_trained_weights_is_one_line(cache, tmp_path):
    status, messages, stderr = child(tmp_path, cache, {"base_filters": 3})  # never prepared
    assert status == 2 and "Traceback" not in stderr
    assert messages[-1]["kind"] == "error" and "--prepare" in messages[-1]["message"]


@pytest.mark.tf
def test_a_weights_file_that_does_not_fit_is_one_line(prepared, cache, tmp_path):
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"not hdf5")
    other = Path(prepared[0]["path"])  # trained for base_filters 2: does not fit base_filters 4
    for path, params in ((garbage, {}), (other, {"base_filters": 4})):
        status, messages, stderr = child(tmp_path, cache, {"weights": str(path), **params}, "--prepare")
        assert status == 2 and "Traceback" not in stderr
        assert messages[-1]["kind"] == "error" and str(path) in messages[-1]["message"]
        assert "\n" not in messages[-1]["message"]


@pytest.mark.tf
def test_the_users_own_file_is_used_as_it_comes(prepared, cache, tmp_path):
    mine = tmp_path / "mine.weights.h5"
    mine.write_bytes(Path(prepared[0]["path"]).read_bytes())
    status, messages, stderr = child(tmp_path, cache, {"weights": str(mine)}, "--prepare")
    assert status == 0, stderr[-2000:]
    assert messages[-1]["weights"] == {"kind": "file", "digest": prepared[0]["weights"]["digest"],
                                       "label": "file mine.weights.h5"}


def test_the_recipe_hash_follows_the_recipe(monkeypatch):
    from workloads.unet3d import weights

    pytest.importorskip("keras")
    monkeypatch.delenv(weights.RECIPE_ENV, raising=False)
    product = weights.recipe(16, 5, 3)
    assert product["steps"] == weights.RECIPE["steps"]
    monkeypatch.setenv(weights.RECIPE_ENV, json.dumps({"steps": 5}))
    assert weights.recipe_hash(weights.recipe(16, 5, 3)) != weights.recipe_hash(product)
    assert weights.recipe_hash(weights.recipe(8, 5, 3)) != weights.recipe_hash(weights.recipe(16, 5, 3))
    monkeypatch.setenv(weights.RECIPE_ENV, json.dumps({"colour": 1}))
    with pytest.raises(BadInput, match=weights.RECIPE_ENV):
        weights.recipe(16, 5, 3)


def test_the_weights_knob_is_a_pinned_file(host):
    from autotune.space import HostFacts, bundled_space, load_space
    from workloads.unet3d.trial import check, settings_from

    knob = load_space(bundled_space("unet3d"), HostFacts.of(host)).knobs["weights"]
    assert knob.type == "file" and knob.default == "" and not knob.searchable()
    assert settings_from({}).weights == ""
    with pytest.raises(BadInput, match=r"not a Keras \.weights\.h5"):
        check({"weights": "/somewhere/model.keras"})
