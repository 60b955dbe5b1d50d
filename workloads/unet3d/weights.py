"""Check weights of the 3D U-Net: trained once on synthetic BraTS, or the user's own file.

The output checks (:mod:`workloads.unet3d.agreement`) judge labels, which only trained weights can:
an untrained network's sigmoid outputs sit near 0.5, where any rounding flips a label. So by default
the checks use weights trained once on the synthetic BraTS data of :mod:`workloads.unet3d.data`, by a
fixed recipe (:data:`RECIPE`), and cached as ``<cache>/unet3d-weights/<recipe hash>.weights.h5``.
The hash covers the recipe, the architecture knobs and the TensorFlow and Keras major versions, so a
different recipe never reuses a file. The network is fully convolutional: weights trained on small
patches apply to any patch. ``--set weights=PATH`` uses the user's own Keras ``.weights.h5`` file
instead. The unet3d check never uses random weights, so its labels are always judged.

Life cycle: the driver runs the workload once with ``--prepare`` before a study (:func:`prepare`
trains the weights if they are missing, or validates the user's file); every trial that computes check
outputs then loads them with :func:`check_weights`. A weights file is always read into a channels_last
float32 copy of the network and moved into the trial's model by weight order, which every layout
shares (``model.build_unet3d``); the digest of the values tells two sets of weights apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from autotune.outputs import array_digest, weights_info
from workloads.harness import BadInput

RECIPE: dict[str, Any] = {
    "version": 1,
    "patch": 32,
    "batch": 2,
    "steps": 200,
    "learning_rate": 1e-3,
    "seed": 0,
    "image_size": 128,
    "synthetic_cases": 2,
    "foreground_share": 0.5,
}
"""How the default check weights are trained: Adam on the workload's Dice loss, float32, channels_last,
no XLA; ``steps`` batches of ``batch`` patches of ``patch``^3 cut from the synthetic BraTS cases
resampled to ``image_size``^3, a share ``foreground_share`` of them centred on a tumour voxel."""
RECIPE_ENV = "AUTOTUNE_UNET3D_WEIGHTS_RECIPE"
"""A JSON object overriding entries of :data:`RECIPE` (a tiny recipe for tests); it changes the hash."""
WEIGHTS_DIR = "unet3d-weights"
N_CHANNELS = 4


@dataclass(frozen=True)
class CheckWeights:
    """The check weights a trial loads: their values (in the network's weight order) and description.

    Attributes:
        values: The weight arrays, float32, in ``model.get_weights()`` order.
        info: :func:`autotune.outputs.weights_info` (kind ``trained`` or ``file``, digest, label).
        path: The file they came from.
    """

    values: list[np.ndarray]
    info: dict[str, str]
    path: Path


def recipe(base_filters: int, depth: int, n_labels: int) -> dict[str, Any]:
    """The full training recipe of the default check weights for one architecture.

    Raises:
        BadInput: :data:`RECIPE_ENV` is not a JSON object of known recipe entries.
    """
    overrides: dict[str, Any] = {}
    text = os.environ.get(RECIPE_ENV, "").strip()
    if text:
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError:
            overrides = None  # type: ignore[assignment]
        if not isinstance(overrides, dict) or set(overrides) - set(RECIPE):
            raise BadInput(f"{RECIPE_ENV} must be a JSON object of {', '.join(RECIPE)}")
    return {
        **RECIPE, **overrides, "base_filters": base_filters, "depth": depth, "n_labels": n_labels,
        "tensorflow_major": _major("tensorflow", "tensorflow-cpu", "tensorflow-intel"), "keras_major": _major("keras"),
    }


def _major(*distributions: str) -> str:
    """The major version of the first installed distribution of ``distributions``, read without importing it."""
    for name in distributions:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name).split(".")[0]
    return "?"


def recipe_hash(full_recipe: dict[str, Any]) -> str:
    """A short hash of a recipe: the cache key of the weights it trains."""
    return hashlib.sha256(json.dumps(full_recipe, sort_keys=True).encode()).hexdigest()[:12]


def trained_path(full_recipe: dict[str, Any], cache_dir: Path | None = None) -> Path:
    """Where the weights of ``full_recipe`` are cached."""
    from workloads.unet3d.data import default_cache_dir

    cache = default_cache_dir() if cache_dir is None else cache_dir
    return cache / WEIGHTS_DIR / f"{recipe_hash(full_recipe)}.weights.h5"


def describe_trained(full_recipe: dict[str, Any]) -> str:
    """The label of trained weights, for people."""
    return (f"trained on synthetic BraTS (recipe {recipe_hash(full_recipe)}, {full_recipe['steps']} steps "
            f"at patch {full_recipe['patch']})")


def load_values(path: Path, base_filters: int, depth: int, n_labels: int) -> list[np.ndarray]:
    """Read a ``.weights.h5`` file of this architecture into a channels_last copy and return its values.

    Raises:
        BadInput: The file cannot be read or does not fit the network (one line, naming the file).
    """
    from workloads.unet3d.model import build_unet3d

    side = 2 ** (depth - 1)
    carrier = build_unet3d((side,) * 3, layout="channels_last", n_labels=n_labels, base_filters=base_filters,
                           depth=depth, dtype_policy="float32")
    if not str(path).endswith(".weights.h5"):
        raise BadInput(f"weights {path}: not a Keras .weights.h5 file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            carrier.load_weights(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise BadInput(f"weights {path} do not fit the unet3d network (base_filters {base_filters}, depth "
                       f"{depth}, n_labels {n_labels}): {reason}") from None
    return [np.asarray(v, dtype=np.float32) for v in carrier.get_weights()]


def check_weights(weights: str | None, base_filters: int, depth: int, n_labels: int) -> CheckWeights:
    """The check weights of a trial: the user's file, or the cached trained weights.

    Raises:
        BadInput: The user's file does not fit, or the trained weights are not cached (``--prepare``
            was not run).
    """
    if weights:
        path = Path(weights)
        values = load_values(path, base_filters, depth, n_labels)
        return CheckWeights(values, weights_info("file", array_digest(*values), f"file {path.name}"), path)
    full = recipe(base_filters, depth, n_labels)
    path = trained_path(full)
    if not path.is_file():
        raise BadInput(f"the trained check weights {path} are missing: run the workload with --prepare first "
                       "(autotune run does) or give --set weights=PATH")
    values = load_values(path, base_filters, depth, n_labels)
    return CheckWeights(values, weights_info("trained", array_digest(*values), describe_trained(full)), path)


def prepare(params: dict[str, Any]) -> dict[str, Any]:
    """Make sure the check weights of ``params`` exist: train and cache them, or validate the user's file.

    What ``--prepare`` runs once per ``autotune run`` before the study, on every worker host.

    Returns:
        ``weights`` (:func:`autotune.outputs.weights_info`), ``path``, ``trained`` (whether this call
        trained them), ``seconds`` (how long this call took) and, when trained here, ``train_seconds``
        and ``final_loss``.

    Raises:
        BadInput: A bad knob, a user's file that does not fit, or an architecture the synthetic labels
            cannot train (``n_labels`` other than 3).
    """
    from workloads.unet3d.trial import settings_from

    start = time.perf_counter()
    params = dict(params)
    params.pop("profile_dir", None)
    s = settings_from(params)
    _import_keras()
    if s.weights:
        found = check_weights(s.weights, s.base_filters, s.depth, s.n_labels)
        return {"weights": found.info, "path": str(found.path), "trained": False,
                "seconds": time.perf_counter() - start}
    from workloads.unet3d.data import LABELS

    if s.n_labels != len(LABELS):
        raise BadInput(f"trained check weights need n_labels = {len(LABELS)} (the BraTS labels); "
                       "give --set weights=PATH for another network")
    full = recipe(s.base_filters, s.depth, s.n_labels)
    path = trained_path(full)
    made: dict[str, Any] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_suffix(".lock")):
        if not path.is_file():
            from workloads.unet3d.training import train

            made = train(full, path)
    found = check_weights("", s.base_filters, s.depth, s.n_labels)
    return {"weights": found.info, "path": str(path), "trained": bool(made),
            "seconds": time.perf_counter() - start, "recipe": full, **made}


def save_atomic(model: Any, path: Path) -> None:
    """Save a model's weights so that ``path`` either does not exist or is complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".weights.h5")
    os.close(fd)
    try:
        model.save_weights(tmp, overwrite=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``path``: two processes of one host never train the same weights."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _import_keras() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
