"""One trial of the 3D U-Net: apply in-process knobs, prepare data and model, time steps.

Order matters: thread pools are configured right after TensorFlow is imported and before any op runs,
and the precision policy before the model is built. Batches are read and preprocessed before the first
step, so the timed steps measure the model alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.protocol import TrialResult
from workloads.harness import BadInput, Reporter, build_result
from workloads.tensorflow_runtime import observed_tensorflow
from workloads.unet3d.model import NORMS

DEFAULTS: dict[str, Any] = {
    "mode": "infer",
    "batch": 1,
    "patch": "128",
    "image_size": 128,
    "base_filters": 16,
    "depth": 5,
    "n_labels": 3,
    "data_format": "channels_first",
    "transpose_elimination": False,
    "per_layer_transpose": False,
    "precision": "float32",
    "xla": False,
    "intra_threads": 0,
    "inter_threads": 0,
    "warmup": 1,
    "steps": 5,
    "trial_seconds": 0.0,
    "seed": 0,
    "data_dir": None,
    "n_batches": 2,
    "weights": "",
    "instance_norm": "moments",
}
MODES = ("infer", "train")
PRECISIONS = ("float32", "mixed_bfloat16")
LEARNING_RATE = 5e-4
# A training step is one forward and one backward pass; the backward costs about twice the forward
# (gradients for inputs and for weights), the usual convention for FLOP counts of training.
TRAIN_FLOPS_FACTOR = 3.0


@dataclass(frozen=True)
class Settings:
    """Validated in-process knobs of one trial."""

    mode: str
    batch: int
    patch: tuple[int, int, int]
    image_size: int
    base_filters: int
    depth: int
    n_labels: int
    layout: str
    precision: str
    xla: bool
    intra_threads: int
    inter_threads: int
    warmup: int
    steps: int
    trial_seconds: float
    seed: int
    data_dir: Path | None
    n_batches: int
    weights: str
    instance_norm: str = "moments"


def layout_of(data_format: str, transpose_elimination: bool, per_layer_transpose: bool) -> str:
    """The model layout strategy (see ``model.LAYOUTS``) for the layout knobs."""
    if data_format == "channels_last":
        return "channels_last"
    if data_format != "channels_first":
        raise BadInput(f"data_format: {data_format!r} is not channels_first or channels_last")
    if transpose_elimination:
        return "cf_eliminated"
    return "cf_per_layer" if per_layer_transpose else "cf_keras"


def settings_from(params: dict[str, Any]) -> Settings:
    """Fill defaults into ``params`` and check them.

    Raises:
        BadInput: An unknown knob or a value the network cannot run with.
    """
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise BadInput(f"unknown unet3d knob {unknown[0]!r}")
    p = {**DEFAULTS, **params}
    try:
        sides = [int(s) for s in str(p["patch"]).split(",")]
        patch = (sides[0],) * 3 if len(sides) == 1 else tuple(sides)
        ints = {k: int(p[k]) for k in ("batch", "image_size", "base_filters", "depth", "n_labels",
                                        "intra_threads", "inter_threads", "warmup", "steps", "seed",
                                        "n_batches")}
    except (TypeError, ValueError):
        raise BadInput(f"patch {p['patch']!r} or an integer knob is not a number") from None
    if len(patch) != 3:
        raise BadInput(f"patch {p['patch']!r} must be D or D,H,W")
    if p["mode"] not in MODES:
        raise BadInput(f"mode {p['mode']!r} is not one of {', '.join(MODES)}")
    if p["precision"] not in PRECISIONS:
        raise BadInput(f"precision {p['precision']!r} is not one of {', '.join(PRECISIONS)}")
    multiple = 2 ** (ints["depth"] - 1)
    if ints["depth"] < 2 or any(s < multiple or s % multiple for s in patch):
        raise BadInput(f"patch {p['patch']} must be a multiple of {multiple} per side at depth {ints['depth']}")
    if max(patch) > ints["image_size"]:
        raise BadInput(f"patch {p['patch']} is larger than image_size {ints['image_size']}")
    if ints["batch"] < 1 or ints["steps"] < 1 or ints["warmup"] < 0 or ints["n_batches"] < 1:
        raise BadInput("batch, steps and n_batches must be at least 1, warmup at least 0")
    if p["instance_norm"] not in NORMS:
        raise BadInput(f"instance_norm {p['instance_norm']!r} is not one of {', '.join(NORMS)}")
    return Settings(
        mode=p["mode"],
        patch=patch,  # type: ignore[arg-type]
        layout=layout_of(p["data_format"], bool(p["transpose_elimination"]), bool(p["per_layer_transpose"])),
        precision=p["precision"],
        xla=bool(p["xla"]),
        data_dir=Path(p["data_dir"]) if p["data_dir"] else None,
        weights=str(p["weights"] or ""),
        trial_seconds=_seconds(p["trial_seconds"]),
        instance_norm=str(p["instance_norm"]),
        **ints,
    )


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"trial_seconds {value!r} is not a number") from None
    if not 0 <= seconds < math.inf:
        raise BadInput(f"trial_seconds {value!r} must be 0 (off) or a positive number")
    return seconds


def check(params: dict[str, Any]) -> dict[str, Any]:
    """Check a trial's in-process knobs and its whole data folder without building a model.

    What the driver runs once before a study (``--check``), so that bad input is one line and exit 2
    before any trial is stored. It imports no TensorFlow.

    Raises:
        BadInput: A knob value the network cannot run with, or a bad data file (named).
    """
    from workloads.unet3d.data import DataError
    from workloads.unet3d.data_check import check_dataset

    params = dict(params)
    params.pop("profile_dir", None)
    s = settings_from(params)
    if s.weights and not s.weights.endswith(".weights.h5"):
        raise BadInput(f"weights {s.weights}: not a Keras .weights.h5 file")
    try:
        found = check_dataset(s.data_dir, with_labels=s.mode == "train")
    except (DataError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    return {"data": dataclasses.asdict(found)}


def run(params: dict[str, Any], reporter: Reporter) -> TrialResult:
    """Run one trial of the 3D U-Net with ``params`` and return its result record.

    ``params["profile_dir"]``, when the driver sends it, is not a knob: the timed steps then run under
    the TensorFlow profiler and their op-time breakdown is written into that folder before the result
    (``workloads.unet3d.profile``).
    """
    from workloads.unet3d.data import DataError, make_batches

    params = dict(params)
    profile_dir = params.pop("profile_dir", None)
    s = settings_from(params)
    tf, keras = _import_framework(s)
    from workloads.unet3d.loss import weighted_dice_coefficient_loss
    from workloads.unet3d.model import build_unet3d, forward_flops, input_layout

    channels_last = input_layout(s.layout) == "channels_last"
    try:
        batches = make_batches(
            s.data_dir, batch=s.batch, patch=s.patch, image_shape=(s.image_size,) * 3,
            n_batches=s.n_batches, channels_last=channels_last, seed=s.seed,
            with_labels=s.mode == "train",
        )
    except (DataError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    keras.utils.set_random_seed(s.seed)
    model = build_unet3d(s.patch, layout=s.layout, n_labels=s.n_labels, base_filters=s.base_filters,
                         depth=s.depth, norm=s.instance_norm)
    axis = -1 if channels_last else 1

    def loss(y_true, y_pred):
        return weighted_dice_coefficient_loss(y_true, y_pred, channel_axis=axis)

    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=loss, jit_compile=s.xla)
    inputs = [tf.constant(x) for x, _ in batches]
    targets = [tf.constant(y) if y is not None else None for _, y in batches]

    # Inference with a check runs every step with the check weights (a forward pass costs the same
    # whatever the weights' values), so the check outputs are those of a timed step on the first batch:
    # no extra pass, and the checked graph is the timed graph.
    seen: dict[str, Any] = {}

    def step(index: int) -> None:
        k = index % len(inputs)
        if s.mode == "train":
            model.train_on_batch(inputs[k], targets[k])
        else:
            outputs = model.predict_on_batch(inputs[k])
            if k == 0:
                seen["outputs"] = outputs

    check, load_seconds, weights_info = None, 0.0, None
    if reporter.outputs_wanted:
        from workloads.unet3d.agreement import reset_weights
        from workloads.unet3d.weights import check_weights

        started = time.perf_counter()
        check = check_weights(s.weights, s.base_filters, s.depth, s.n_labels)
        if s.mode == "infer":
            weights_info = reset_weights(model, check)
        load_seconds = time.perf_counter() - started
    voxels = s.batch * math.prod(s.patch)
    profiler = None
    if profile_dir:
        from workloads.unet3d.profile import StepProfile

        profiler = StepProfile(profile_dir)
    warmup_times, step_times = reporter.time_steps(
        step, s.warmup, s.steps, work_per_step=voxels, trial_seconds=s.trial_seconds,
        before_timed=profiler.start if profiler else None,
    )
    if profiler:
        profiler.finish(step_times)
    outputs, extra = None, None
    if check is not None and weights_info is not None and "outputs" in seen:
        from workloads.unet3d.agreement import timed_outputs_payload

        started = time.perf_counter()
        outputs = timed_outputs_payload(seen["outputs"], batches[0][0], channels_last=channels_last,
                                        weights=weights_info)
        extra = {"check_seconds": load_seconds + time.perf_counter() - started}
    elif check is not None:
        from workloads.unet3d.agreement import run_check

        outputs, seconds = run_check(model, *batches[0], mode=s.mode, channels_last=channels_last,
                                     weights=check, loss=loss, xla=s.xla)
        extra = {"check_seconds": load_seconds + seconds}
    flops = s.batch * forward_flops(s.patch, n_labels=s.n_labels, base_filters=s.base_filters, depth=s.depth)
    if s.mode == "train":
        flops *= TRAIN_FLOPS_FACTOR
    return build_result(
        "unet3d",
        {**DEFAULTS, **params, "patch": ",".join(map(str, s.patch)) if len(set(s.patch)) > 1 else str(s.patch[0])},
        warmup_times,
        step_times,
        work_per_step=voxels,
        rate_name="voxels_per_s",
        samples_per_step=s.batch,
        flops_per_step=flops,
        setup_seconds=reporter.setup_seconds,
        effective={**_effective(tf, keras, s, model), **({"check_seconds": extra["check_seconds"]} if extra else {})},
        extra=extra,
        outputs=outputs,
    )


def _import_framework(s: Settings) -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(s.intra_threads)
    tf.config.threading.set_inter_op_parallelism_threads(s.inter_threads)
    keras.mixed_precision.set_global_policy(s.precision)
    return tf, keras


def _effective(tf: Any, keras: Any, s: Settings, model: Any) -> dict[str, Any]:
    return {
        **observed_tensorflow(tf, keras),
        "layout": s.layout,
        "precision_policy": keras.mixed_precision.global_policy().name,
        "xla": s.xla,
        "instance_norm": s.instance_norm,
        "parameters": int(model.count_params()),
    }
