"""What a trial computed, encoded so that two configurations' answers can be compared.

A model workload told to (``TrialConfig.outputs``) computes, after its timed steps, its outputs for fixed
check inputs and fixed check weights, with the same model and shapes it was timed with, and sends them
in its result record (``TrialResult.outputs``) as one of two payloads built here:

* :func:`encode_outputs` for an inference: a fixed sample of the raw outputs (the same positions for
  every configuration of the same output shape) and, when the weights are meaningful, the whole label
  map (thresholded sigmoid channels for a segmentation, the arg-max for a classifier), bit-packed and
  compressed;
* :func:`encode_scalars` for a training step: named scalars such as the first step's loss and
  gradient norm.

The driver compares a trial's payload with the reference configuration's (:func:`compare`) and gets
the agreement figures (:data:`FIGURE_UNITS`). This module imports numpy only: workloads and the driver
share it.
"""

from __future__ import annotations

import base64
import hashlib
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

# Raw outputs compared element by element: a fixed sample of this many (all, when there are fewer).
SAMPLE_SIZE = 16384
LABEL_KINDS = ("threshold", "argmax")
# What the weights of a check were: only meaningful weights can judge labels.
WEIGHT_KINDS = ("trained", "file", "model", "random")
FIGURE_UNITS = {
    "max_abs_error": "",
    "rel_l2_error": "",
    "dice": "",
    "label_flip_share": "",
}
"""Agreement figures of an inference (scalars add ``<name>_rel_error`` for each scalar)."""


class OutputsError(ValueError):
    """A payload that cannot be read or compared; the message is one line."""


def weights_info(kind: str, digest: str = "", label: str = "") -> dict[str, str]:
    """Describe the check weights: ``kind`` (see :data:`WEIGHT_KINDS`), a digest and a label for people.

    Raises:
        OutputsError: An unknown kind.
    """
    if kind not in WEIGHT_KINDS:
        raise OutputsError(f"weights kind {kind!r} is not one of {', '.join(WEIGHT_KINDS)}")
    return {"kind": kind, "digest": digest, "label": label or kind}


def array_digest(*arrays: np.ndarray) -> str:
    """A short SHA-256 digest of arrays' bytes (weights, inputs), to tell two sets apart."""
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:16]


def encode_outputs(
    outputs: np.ndarray, *, weights: Mapping[str, str], labels: str | None = None, channel_axis: int = -1,
    inputs_digest: str = "",
) -> dict[str, Any]:
    """Encode an inference's outputs.

    Args:
        outputs: The model's outputs for the check inputs (any float dtype; compared as float32).
        weights: :func:`weights_info` of the check weights.
        labels: ``threshold`` (each channel > 0.5 is a label: sigmoid segmentation), ``argmax`` (the
            largest channel along ``channel_axis``: a classifier) or None (raw outputs only). Labels are
            not encoded with random weights: their outputs sit near the threshold, where rounding
            flips labels, so labels would judge noise.
        channel_axis: The outputs' channel axis, for ``argmax``.
        inputs_digest: :func:`array_digest` of the check inputs, so that a trial is never compared with
            a reference of other inputs.

    Returns:
        A JSON-ready payload.
    """
    values = np.asarray(outputs, dtype=np.float32)
    if labels is not None and labels not in LABEL_KINDS:
        raise OutputsError(f"labels {labels!r} is not one of {', '.join(LABEL_KINDS)}")
    payload: dict[str, Any] = {
        "kind": "outputs",
        "shape": list(values.shape),
        "weights": dict(weights),
        "inputs": inputs_digest,
        "sample": _b64(values.reshape(-1)[_positions(values.size)].astype("<f4").tobytes()),
        "finite": bool(np.isfinite(values).all()),
    }
    if labels is not None and weights.get("kind") != "random":
        bits = values > 0.5 if labels == "threshold" else np.argmax(values, axis=channel_axis).astype("<i4")
        payload["labels"] = labels
        payload["label_data"] = _b64(zlib.compress(_label_bytes(bits, labels), 6))
    return payload


def encode_scalars(
    values: Mapping[str, float], *, weights: Mapping[str, str], inputs_digest: str = ""
) -> dict[str, Any]:
    """Encode named scalars of a training step (e.g. ``loss`` and ``grad_norm`` of the first step)."""
    return {
        "kind": "scalars",
        "values": {k: float(v) for k, v in values.items()},
        "weights": dict(weights),
        "inputs": inputs_digest,
    }


def compare(trial: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float]:
    """Agreement figures of a trial's payload against the reference's.

    Inference: ``max_abs_error`` and ``rel_l2_error`` (||trial - reference|| / ||reference||) over the
    fixed sample of raw outputs; with labels, ``dice`` (overlap of the thresholded label maps; 1 when
    both are empty) and ``label_flip_share`` (share of labels that differ), over the whole output.
    Training: ``<name>_rel_error`` for each scalar.

    Raises:
        OutputsError: The payloads are of different kinds, shapes, inputs or weights, or unreadable.
    """
    kind = trial.get("kind")
    if kind != reference.get("kind"):
        raise OutputsError(f"cannot compare {kind!r} outputs with a {reference.get('kind')!r} reference")
    if trial.get("inputs") != reference.get("inputs"):
        raise OutputsError("the trial's check inputs differ from the reference's")
    if _weights_key(trial) != _weights_key(reference):
        raise OutputsError("the trial's check weights differ from the reference's "
                           f"({_weights_key(trial)[1][:8]} against {_weights_key(reference)[1][:8]})")
    if kind == "scalars":
        return _compare_scalars(trial.get("values"), reference.get("values"))
    if kind != "outputs":
        raise OutputsError(f"unknown outputs payload kind {kind!r}")
    if trial.get("shape") != reference.get("shape"):
        raise OutputsError(f"outputs of shape {trial.get('shape')} against a reference of {reference.get('shape')}")
    got, want = _sample(trial), _sample(reference)
    figures: dict[str, float] = {}
    if not trial.get("finite", True) or not np.isfinite(got).all():
        figures["max_abs_error"] = math.inf
        figures["rel_l2_error"] = math.inf
    else:
        diff = got.astype(np.float64) - want.astype(np.float64)
        norm = float(np.linalg.norm(want.astype(np.float64)))
        figures["max_abs_error"] = float(np.max(np.abs(diff))) if diff.size else 0.0
        figures["rel_l2_error"] = float(np.linalg.norm(diff)) / norm if norm > 0 else float(np.linalg.norm(diff))
    if "label_data" in trial and "label_data" in reference and trial.get("labels") == reference.get("labels"):
        mine, theirs = _labels(trial), _labels(reference)
        if mine.shape != theirs.shape:
            raise OutputsError("label maps of different sizes")
        figures["label_flip_share"] = float(np.mean(mine != theirs)) if mine.size else 0.0
        if trial["labels"] == "threshold":
            both = int(np.count_nonzero(mine & theirs))
            total = int(np.count_nonzero(mine)) + int(np.count_nonzero(theirs))
            figures["dice"] = 2.0 * both / total if total else 1.0
    return figures


def labels_judged(payload: Mapping[str, Any]) -> bool:
    """Whether a payload carries labels (meaningful weights and a label kind)."""
    return "label_data" in payload


def _compare_scalars(mine: Any, theirs: Any) -> dict[str, float]:
    if not isinstance(mine, dict) or not isinstance(theirs, dict):
        raise OutputsError("scalars payload without values")
    figures = {}
    for name in sorted(set(mine) & set(theirs)):
        a, b = float(mine[name]), float(theirs[name])
        if not (math.isfinite(a) and math.isfinite(b)):
            figures[f"{name}_rel_error"] = math.inf
        else:
            figures[f"{name}_rel_error"] = abs(a - b) / abs(b) if b else abs(a - b)
    return figures


def _weights_key(payload: Mapping[str, Any]) -> tuple[str, str]:
    weights = payload.get("weights") or {}
    return str(weights.get("kind", "")), str(weights.get("digest", ""))


def _positions(size: int) -> np.ndarray:
    """The sampled flat positions of an output of ``size`` elements: the same for every configuration."""
    if size <= SAMPLE_SIZE:
        return np.arange(size)
    rng = np.random.default_rng(size)
    return np.sort(rng.choice(size, SAMPLE_SIZE, replace=False))


def _label_bytes(labels: np.ndarray, kind: str) -> bytes:
    if kind == "threshold":
        return np.packbits(labels.reshape(-1)).tobytes()
    return labels.reshape(-1).tobytes()


def _labels(payload: Mapping[str, Any]) -> np.ndarray:
    try:
        raw = zlib.decompress(base64.b64decode(payload["label_data"]))
    except (ValueError, TypeError, zlib.error) as exc:
        raise OutputsError(f"unreadable label map ({exc})") from None
    size = math.prod(int(s) for s in payload.get("shape", []))
    if payload.get("labels") == "threshold":
        return np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:size].astype(bool)
    return np.frombuffer(raw, dtype="<i4")


def _sample(payload: Mapping[str, Any]) -> np.ndarray:
    try:
        return np.frombuffer(base64.b64decode(payload["sample"]), dtype="<f4")
    except (KeyError, ValueError, TypeError) as exc:
        raise OutputsError(f"unreadable outputs sample ({exc})") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
