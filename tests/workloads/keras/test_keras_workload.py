"""The keras workload: bad input is one line, inputs follow the model, real runs report samples/s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workloads.harness import BadInput
from workloads.keras.inputs import SMALL_INT_HIGH, InputSpec, fit_batch, read_file, synthetic
from workloads.keras.model_file import check_path
from workloads.keras.trial import NO_TRAINING, settings_from

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def autotune(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "autotune", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one error line of a command that exited 2 (and only that line on stderr)."""
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("autotune: error: "), done.stderr
    return lines[0]


# --- without TensorFlow ---------------------------------------------------------------------------

def test_settings_refuse_unknown_knobs_and_bad_values():
    assert settings_from({"model": "m.keras", "batch": 8}).batch == 8
    for params in ({"bacth": 8}, {"batch": 0}, {"mode": "serve"}, {"precision": "float16"},
                   {"dynamic_size": 0}, {"trial_seconds": -1}):
        with pytest.raises(BadInput):
            settings_from(params)


def test_model_path_problems_are_one_line_naming_the_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    fake = tmp_path / "fake.keras"
    fake.write_text("not a zip archive")
    cases = {"": "give the model file: --set model=PATH", str(tmp_path / "missing.keras"): "not found",
             str(text): "not a Keras 3 model file", str(fake): "corrupt", str(tmp_path): "not a file"}
    for path, problem in cases.items():
        with pytest.raises(BadInput) as caught:
            check_path(path)
        message = str(caught.value)
        assert problem in message and "\n" not in message
        assert path in message


def test_synthetic_inputs_follow_dtype_and_embedding_range():
    specs = [InputSpec("ids", (None, 3), "int32", high=7), InputSpec("counts", (2,), "int64"),
             InputSpec("image", (4, 4, 3), "float32"), InputSpec("mask", (5,), "bool"),
             InputSpec("half", (2,), "bfloat16")]
    arrays = synthetic(specs, batch=64, dynamic_size=9, seed=1)
    ids, counts, image, mask, half = arrays
    assert ids.shape == (64, 9, 3) and ids.dtype == np.int32 and ids.min() >= 0 and ids.max() == 6
    assert counts.dtype == np.int64 and counts.min() >= 0 and counts.max() == SMALL_INT_HIGH - 1
    assert image.shape == (64, 4, 4, 3) and image.dtype == np.float32
    assert abs(float(image.mean())) < 0.1 and 0.9 < float(image.std()) < 1.1
    assert mask.dtype == np.bool_ and 0 < mask.mean() < 1
    assert half.dtype.name == "bfloat16"
    again = synthetic(specs, batch=64, dynamic_size=9, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, again, strict=True))


def test_inputs_file_matched_by_name_or_position_and_fit_to_the_batch(tmp_path):
    specs = [InputSpec("a", (None,), "float32"), InputSpec("b", (2,), "int32", high=5)]
    named = tmp_path / "named.npz"
    np.savez(named, b=np.array([[1, 2], [3, 4], [0, 4]], dtype=np.int64), a=np.ones((3, 7)))
    a, b = read_file(named, specs)
    assert a.shape == (3, 7) and b.shape == (3, 2)
    positional = tmp_path / "positional.npz"
    np.savez(positional, np.zeros((2, 7)), np.ones((2, 2), dtype=np.int32))
    a, b = read_file(positional, specs)
    assert a.shape == (2, 7) and b.dtype == np.int32
    tiled = fit_batch([np.arange(3.0)[:, None], np.arange(6).reshape(3, 2)], specs, 7)
    assert tiled[0].dtype == np.float32 and tiled[0][:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert tiled[1].dtype == np.int32 and len(tiled[1]) == 7
    assert fit_batch([np.arange(3.0)[:, None], np.arange(6).reshape(3, 2)], specs, 2)[0].shape == (2, 1)


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"a": np.zeros((2, 7)), "b": np.zeros((2, 3), dtype=np.int32)}, "has shape (2, 3)"),
        ({"a": np.zeros((2, 7)), "b": np.zeros((2, 2), dtype=np.float32)}, "does not convert"),
        ({"a": np.zeros((2, 7)), "b": np.full((2, 2), 5, dtype=np.int32)}, "outside 0..4"),
        ({"a": np.zeros((2, 7))}, "holds 1 array"),
        ({"a": np.zeros(7), "b": np.zeros((2, 2), dtype=np.int32)}, "has shape (7,)"),
    ],
)
def test_inputs_file_that_does_not_fit_is_bad_input(tmp_path, arrays, problem):
    specs = [InputSpec("a", (None,), "float32"), InputSpec("b", (2,), "int32", high=5)]
    path = tmp_path / "inputs.npz"
    np.savez(path, **arrays)
    with pytest.raises(BadInput) as caught:
        read_file(path, specs)
    assert problem in str(caught.value) and str(path) in str(caught.value)


def test_inputs_file_with_pickles_or_garbage_is_bad_input(tmp_path):
    specs = [InputSpec("a", (2,), "float32")]
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really")
    text = tmp_path / "inputs.txt"
    text.write_text("1 2\n")
    for path in (pickled, garbage, text, tmp_path / "missing.npy"):
        with pytest.raises(BadInput) as caught:
            read_file(path, specs)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_run_without_a_model_is_one_line_exit_2(tmp_path):
    done = autotune("run", "--workload", "keras", "--trials", "1", "--storage", f"sqlite:///{tmp_path}/s.db")
    assert "give the model file: --set model=PATH" in error_line(done)
    assert not (tmp_path / "s.db").exists() or "keras-" not in done.stdout


# --- with TensorFlow ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    import keras_models

    folder = tmp_path_factory.mktemp("models")
    return {
        "dense": keras_models.dense(folder),
        "compiled": keras_models.dense(folder, compiled=True, name="compiled"),
        "lambda": keras_models.with_lambda(folder),
        "sequence": keras_models.sequence(folder),
        "mobilenet": keras_models.mobilenet(folder),
    }


@pytest.mark.tf
def test_check_mode_refuses_bad_model_files_in_one_line(models, tmp_path):
    from workloads.keras.trial import check

    with pytest.raises(BadInput) as caught:
        check({"model": str(models["lambda"])})
    assert "safe_mode" in str(caught.value) and str(models["lambda"]) in str(caught.value)
    with pytest.raises(BadInput) as caught:
        check({"model": str(models["dense"]), "mode": "train"})
    assert NO_TRAINING in str(caught.value)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 9), dtype=np.float32))
    with pytest.raises(BadInput) as caught:
        check({"model": str(models["dense"]), "inputs": str(wrong)})
    assert str(wrong) in str(caught.value) and "has shape (4, 9)" in str(caught.value)
    right = tmp_path / "right.npy"
    np.save(right, np.zeros((3, 8), dtype=np.float64))
    found = check({"model": str(models["compiled"]), "mode": "train", "inputs": str(right), "batch": 5})
    assert found["inputs"] == [{"name": found["inputs"][0]["name"], "shape": [5, 8], "dtype": "float32"}]
    assert found["parameters"] == 8 * 16 + 16 + 16 * 2 + 2


@pytest.mark.tf
def test_lambda_model_stops_the_run_before_any_trial(models, tmp_path):
    done = autotune("run", "--workload", "keras", "--set", f"model={models['lambda']}", "--trials", "1",
                    "--storage", f"sqlite:///{tmp_path}/s.db")
    line = error_line(done)
    assert "safe_mode" in line and str(models["lambda"]) in line


@pytest.mark.tf
def test_integer_inputs_stay_below_their_embedding(models):
    import keras
    import keras_models

    from workloads.keras.model_file import input_specs

    specs = input_specs(keras, keras_models.mixed_inputs())
    assert [(s.name, s.dtype, s.high) for s in specs] == [
        ("ids", "int32", keras_models.VOCAB), ("counts", "int64", None), ("floats", "float32", None)]
    ids, counts, _floats = synthetic(specs, batch=256, dynamic_size=4, seed=0)
    assert ids.max() == keras_models.VOCAB - 1 and counts.max() == SMALL_INT_HIGH - 1
    sequence = keras.saving.load_model(models["sequence"], compile=False)
    assert [(s.name, s.shape, s.high) for s in input_specs(keras, sequence)] == [
        ("tokens", (None,), keras_models.VOCAB), ("features", (None, 4), None)]


@pytest.mark.tf
def test_bfloat16_clone_computes_in_bfloat16_with_the_same_weights(models):
    import keras

    from workloads.keras.model_file import with_policy

    model = keras.saving.load_model(models["dense"], compile=False, safe_mode=True)
    clone = with_policy(keras, model, "mixed_bfloat16")
    assert [layer.compute_dtype for layer in clone.layers] == ["bfloat16", "bfloat16"]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), clone.get_weights(), strict=True))
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    want, got = model.predict_on_batch(x), np.asarray(clone.predict_on_batch(x), dtype=np.float32)
    assert not np.array_equal(want, got) and np.allclose(want, got, atol=0.1)


@pytest.mark.tf
@pytest.mark.parametrize(
    ("name", "mode", "inputs"),
    [
        # keras.applications names its input after a global counter: the name is not checked.
        ("mobilenet", "infer", {None: "(1, 32, 32, 3) float32"}),
        # Not convolutional, two inputs of dynamic length (dynamic_size 32), trained on its compiled loss.
        ("sequence", "train", {"tokens": "(1, 32) int32", "features": "(1, 32, 4) float32"}),
    ],
)
def test_end_to_end_run_reports_samples_per_second(models, tmp_path, name, mode, inputs):
    import optuna

    storage = f"sqlite:///{tmp_path}/study.db"
    # The keras.applications model runs the whole flow to a confirmed speedup; the sequence model (the
    # suite's time budget) its trials only: references and one search trial.
    confirm = ("--confirm-repeats", "1") if name == "mobilenet" else ("--confirm-repeats", "0")
    trials = "2" if name == "mobilenet" else "3"  # the references; the sequence model adds a search trial
    done = autotune("run", "--workload", "keras", "--set", f"model={models[name]}", "--set", f"mode={mode}",
                    "--trials", trials, "--confirm-top", "1", *confirm,
                    "--no-profile", "--set", "steps=2", "--set", "warmup=1", "--set", "trial_seconds=0",
                    "--storage", storage, "--report-dir", str(tmp_path / "report"), timeout=600)
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.study_name.startswith(f"keras-{mode}-")
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert study.metric_names == ["samples_per_s (samples/s)"]
    ok = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(ok) == int(trials), [t.user_attrs.get("reason") for t in study.trials]
    assert all(t.value > 0 for t in ok)
    baseline = ok[0].user_attrs
    assert baseline["config"]["batch"] == 1 and baseline["config"]["mode"] == mode
    seen = baseline["effective"]["inputs"]
    assert (list(seen.values()) if None in inputs else seen) == (list(inputs.values()) if None in inputs else inputs)
    assert baseline["gflops_per_s"] > 0
    assert "samples/s" in done.stdout
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    best = json.loads((tmp_path / "report" / "best.json").read_text())
    speedup = best["speedup"]["vs_baseline"]
    assert speedup["scope"] == ("paired rounds" if name == "mobilenet" else "within one process each")
    assert speedup["value"] > 0
    assert best["figures"]["best"]["samples_per_s"] > 0


def test_search_space_declares_the_contract_and_references(host):
    from autotune.space import HostFacts, load_space

    facts = HostFacts.of(host)
    space = load_space(REPO / "search_spaces" / "keras.toml", facts)
    assert (space.workload, space.module) == ("keras", "workloads.keras")
    assert space.metric_name == "samples_per_s (samples/s)" and space.objective.maximize
    assert space.knobs["model"].type == "file" and not space.knobs["model"].searchable()
    assert space.knobs["batch"].searchable() and space.knobs["onednn"].env == "TF_ENABLE_ONEDNN_OPTS"
    assert ("mixed_bfloat16" in space.knobs["precision"].choices) == bool(facts.isa.get("avx512_bf16"))
    baseline, vendor = space.reference("baseline", {}), space.reference("vendor_recommended", {})
    assert baseline["onednn"] is True and baseline["batch"] == 1 and baseline["affinity"] == "none"
    assert vendor["intra_threads"] == facts.counts["physical_cores_per_socket"]
    assert vendor["inter_threads"] == facts.counts["sockets"] and vendor["affinity"] == "socket"
