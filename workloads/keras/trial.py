"""One trial of the user's Keras model: apply in-process knobs, load the file, prepare inputs, time steps.

Order matters: thread pools are configured right after TensorFlow is imported and before any op runs
(loading a model creates its variables). Inputs (and training targets) are made before the first step,
so the timed steps measure the model alone: ``predict_on_batch`` (inference) or ``train_on_batch`` (one
optimizer step on the file's compiled loss), as a user's own loop calls them. When the driver asks for
the check outputs, they are computed after the timed steps (:mod:`workloads.keras.agreement`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.protocol import TrialResult
from workloads.harness import BadInput, Reporter, build_result
from workloads.keras.inputs import InputSpec, fit_batch, read_file, synthetic
from workloads.tensorflow_runtime import observed_tensorflow

DEFAULTS: dict[str, Any] = {
    "model": "",
    "inputs": "",
    "mode": "infer",
    "batch": 1,
    "dynamic_size": 32,
    "precision": "float32",
    "xla": False,
    "intra_threads": 0,
    "inter_threads": 0,
    "warmup": 1,
    "steps": 20,
    "trial_seconds": 0.0,
    "seed": 0,
    "untrained": False,
}
MODES = ("infer", "train")
PRECISIONS = ("float32", "mixed_bfloat16")
# A training step is one forward and one backward pass; the backward costs about twice the forward, the
# usual convention for FLOP counts of training (as in workloads.unet3d).
TRAIN_FLOPS_FACTOR = 3.0
NO_TRAINING = "the model file has no compiled loss/optimizer: only mode=infer"


@dataclass(frozen=True)
class Settings:
    """Validated in-process knobs of one trial."""

    model: str
    inputs: str
    mode: str
    batch: int
    dynamic_size: int
    precision: str
    xla: bool
    intra_threads: int
    inter_threads: int
    warmup: int
    steps: int
    trial_seconds: float
    seed: int
    untrained: bool = False


def settings_from(params: dict[str, Any]) -> Settings:
    """Fill defaults into ``params`` and check them (no file is opened here).

    Raises:
        BadInput: An unknown knob or a value out of range.
    """
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise BadInput(f"unknown keras knob {unknown[0]!r}")
    p = {**DEFAULTS, **params}
    try:
        ints = {k: int(p[k]) for k in ("batch", "dynamic_size", "intra_threads", "inter_threads", "warmup",
                                        "steps", "seed")}
        seconds = float(p["trial_seconds"])
    except (TypeError, ValueError):
        raise BadInput("an integer knob or trial_seconds is not a number") from None
    if p["mode"] not in MODES:
        raise BadInput(f"mode {p['mode']!r} is not one of {', '.join(MODES)}")
    if p["precision"] not in PRECISIONS:
        raise BadInput(f"precision {p['precision']!r} is not one of {', '.join(PRECISIONS)}")
    if ints["batch"] < 1 or ints["steps"] < 1 or ints["dynamic_size"] < 1 or ints["warmup"] < 0:
        raise BadInput("batch, steps and dynamic_size must be at least 1, warmup at least 0")
    if ints["intra_threads"] < 0 or ints["inter_threads"] < 0:
        raise BadInput("intra_threads and inter_threads must be 0 (TensorFlow's default) or more")
    if not 0 <= seconds < math.inf:
        raise BadInput(f"trial_seconds {p['trial_seconds']!r} must be 0 (off) or a positive number")
    if not isinstance(p["untrained"], bool):
        raise BadInput(f"untrained {p['untrained']!r} must be true or false")
    return Settings(model=str(p["model"] or ""), inputs=str(p["inputs"] or ""), mode=p["mode"],
                    precision=p["precision"], xla=bool(p["xla"]), trial_seconds=seconds,
                    untrained=p["untrained"], **ints)


def check(params: dict[str, Any]) -> dict[str, Any]:
    """Check the knobs, load the model file (safe_mode) and its inputs, measure nothing.

    What the driver runs once before a study (``--check``): bad input is one line naming the file.

    Raises:
        BadInput: A knob value out of range; a missing, corrupt or unsafe model file (a Lambda layer);
            ``mode=train`` on a file without a compiled loss and optimizer; an inputs file that does not
            fit the model's inputs.
    """
    from workloads.keras.model_file import check_path

    s = settings_from(params)
    check_path(s.model)
    _tf, keras = _import_framework(s, threads=False)
    model, specs, arrays = _prepare(keras, s)
    return {
        "model": s.model,
        "parameters": int(model.count_params()),
        "inputs": [{"name": spec.name, "shape": list(a.shape), "dtype": spec.dtype}
                   for spec, a in zip(specs, arrays, strict=True)],
        "inputs_file": s.inputs or None,
    }


def run(params: dict[str, Any], reporter: Reporter) -> TrialResult:
    """Run one trial of the user's model with ``params`` and return its result record."""
    from autotune.calibrate import cache_dir
    from workloads.keras.model_file import cached_forward_flops, check_path

    s = settings_from(params)
    check_path(s.model)
    tf, keras = _import_framework(s)
    model, specs, arrays = _prepare(keras, s)
    float_model = model
    # The file's weights as loaded, before training steps change them: the check's weights.
    file_weights = float_model.get_weights() if reporter.outputs_wanted else []
    if s.precision != "float32":
        from workloads.keras.model_file import with_policy

        model = with_policy(keras, float_model, s.precision)
        if s.mode == "train":
            model.compile(optimizer=keras.optimizers.deserialize(keras.optimizers.serialize(float_model.optimizer)),
                          loss=float_model.loss)
    model.jit_compile = s.xla
    x = _pack(model, [tf.constant(a) for a in arrays])
    y = _targets(tf, model, x) if s.mode == "train" else None

    def step(_index: int) -> None:
        if s.mode == "train":
            model.train_on_batch(x, y)
        else:
            model.predict_on_batch(x)

    # Counted on the float32 model: the FLOPs of the computation, whatever precision carries it out.
    flops = cached_forward_flops(tf, float_model, arrays, s.model, cache_dir())
    if flops and s.mode == "train":
        flops *= TRAIN_FLOPS_FACTOR
    warmup_times, step_times = reporter.time_steps(
        step, s.warmup, s.steps, work_per_step=s.batch, trial_seconds=s.trial_seconds,
    )
    outputs: dict[str, Any] = {}
    extra: dict[str, float] = {}
    if reporter.outputs_wanted:
        start = time.perf_counter()
        outputs = _check_outputs(tf, keras, s, model, float_model, specs, arrays, file_weights)
        extra["check_seconds"] = time.perf_counter() - start
    return build_result(
        "keras",
        {**DEFAULTS, **params},
        warmup_times,
        step_times,
        work_per_step=s.batch,
        rate_name="samples_per_s",
        samples_per_step=s.batch,
        flops_per_step=flops,
        setup_seconds=reporter.setup_seconds,
        effective=_effective(tf, keras, s, model, specs, arrays),
        extra=extra,
        outputs=outputs,
    )


def _check_outputs(
    tf: Any, keras: Any, s: Settings, model: Any, float_model: Any, specs: list[InputSpec], arrays: list[Any],
    file_weights: list[Any],
) -> dict[str, Any]:
    """The check payload of the timed ``model`` (see :mod:`workloads.keras.agreement`)."""
    from autotune.outputs import array_digest
    from workloads.keras.agreement import CHECK_SEED, check_weights, infer_payload, label_kind, train_payload

    model.set_weights(file_weights)
    weights = check_weights(file_weights, s.model, untrained=s.untrained)
    # The user's inputs are fixed already (and meaningful); synthetic ones are drawn again, seed fixed.
    check_arrays = arrays if s.inputs else synthetic(specs, s.batch, s.dynamic_size, CHECK_SEED)
    x = _pack(model, [tf.constant(a) for a in check_arrays])
    if s.mode == "infer":
        return infer_payload(model, x, labels=label_kind(keras, float_model), weights=weights,
                             inputs_digest=array_digest(*check_arrays))
    y = _targets(tf, float_model, x)
    targets = [np.asarray(t) for t in tf.nest.flatten(y)]
    return train_payload(keras, model, x, y, xla=s.xla, weights=weights,
                         inputs_digest=array_digest(*check_arrays, *targets))


def _prepare(keras: Any, s: Settings) -> tuple[Any, list[InputSpec], list[Any]]:
    """Load the model (compiled for training) and make its inputs; BadInput for anything unusable."""
    from workloads.keras.model_file import input_specs, load

    model = load(keras, s.model, compile=s.mode == "train")
    if s.mode == "train" and (getattr(model, "optimizer", None) is None or getattr(model, "loss", None) is None):
        raise BadInput(f"{s.model}: {NO_TRAINING}")
    specs = input_specs(keras, model)
    if s.inputs:
        arrays = fit_batch(read_file(s.inputs, specs), specs, s.batch)
    else:
        arrays = synthetic(specs, s.batch, s.dynamic_size, s.seed)
    return model, specs, arrays


def _pack(model: Any, tensors: list[Any]) -> Any:
    """Tensors in the structure the model takes: one tensor, a dict by input name, or a list."""
    from workloads.keras.model_file import input_structure

    structure = input_structure(model)
    if isinstance(structure, dict):
        return dict(zip(structure, tensors, strict=True))
    return tensors[0] if len(tensors) == 1 else tensors


def _targets(tf: Any, model: Any, x: Any) -> Any:
    """Seeded synthetic targets shaped like the model's outputs on ``x``.

    A sparse loss (its name holds ``sparse``) gets integer class indices below the output's last
    dimension, shaped like the output without it; any other loss gets values in [0, 1) shaped like the
    output (valid for crossentropies and regression losses alike).
    """
    outputs = model(x, training=False)
    sparse = "sparse" in _loss_name(model.loss)
    generator = tf.random.Generator.from_seed(0)

    def target(out: Any) -> Any:
        if sparse and out.shape.rank >= 2:
            return generator.uniform(out.shape[:-1], 0, int(out.shape[-1]), dtype=tf.int32)
        return generator.uniform(out.shape, dtype=tf.float32)

    return tf.nest.map_structure(target, outputs)


def _loss_name(loss: Any) -> str:
    if isinstance(loss, str):
        return loss.lower()
    if isinstance(loss, dict | list | tuple):
        values = loss.values() if isinstance(loss, dict) else loss
        return " ".join(_loss_name(v) for v in values)
    return f"{getattr(loss, 'name', '')} {type(loss).__name__} {getattr(loss, '__name__', '')}".lower()


def _import_framework(s: Settings, *, threads: bool = True) -> tuple[Any, Any]:
    """TensorFlow and Keras, with the thread pools set before any op runs (not needed by a check)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(s.intra_threads)
        tf.config.threading.set_inter_op_parallelism_threads(s.inter_threads)
    return tf, keras


def _effective(
    tf: Any, keras: Any, s: Settings, model: Any, specs: list[InputSpec], arrays: list[Any]
) -> dict[str, Any]:
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    return {
        **observed_tensorflow(tf, keras),
        "precision_policy": s.precision,
        "compute_dtype": layers[0].compute_dtype if layers else None,
        "xla": bool(model.jit_compile),
        "inputs": {spec.name: f"{tuple(a.shape)} {spec.dtype}" for spec, a in zip(specs, arrays, strict=True)},
        "parameters": int(model.count_params()),
    }
