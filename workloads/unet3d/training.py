"""Training of the default check weights (:mod:`workloads.unet3d.weights`) on synthetic BraTS.

Float32, channels_last, no XLA, Adam on the workload's Dice loss: the plainest path, so the weights
do not depend on the configurations they later check. Patches are cut from the synthetic cases, a
share of them centred on a tumour voxel so that small patches see the labels often enough.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from workloads.unet3d.weights import N_CHANNELS, save_atomic


def training_batches(full_recipe: dict[str, Any]):
    """Yield ``steps`` channels_last ``(x, y)`` batches of the recipe, forever the same for one recipe."""
    from workloads.unet3d.data import ensure_synthetic_brats, find_cases, load_case

    r = full_recipe
    root = ensure_synthetic_brats(n_cases=r["synthetic_cases"])
    cases = [load_case(case, (r["image_size"],) * 3) for case in find_cases(root)[: r["synthetic_cases"]]]
    tumours = [np.argwhere(labels.any(axis=0)) for _, labels in cases]
    rng = np.random.default_rng(r["seed"])
    patch, size = r["patch"], r["image_size"]
    for _ in range(r["steps"]):
        xs, ys = [], []
        for _ in range(r["batch"]):
            index = int(rng.integers(len(cases)))
            image, labels = cases[index]
            if len(tumours[index]) and rng.random() < r["foreground_share"]:
                centre = tumours[index][rng.integers(len(tumours[index]))]
                starts = np.clip(centre - patch // 2, 0, size - patch)
            else:
                starts = rng.integers(0, size - patch + 1, 3)
            box = (slice(None), *(slice(int(s), int(s) + patch) for s in starts))
            xs.append(np.moveaxis(image[box], 0, -1))
            ys.append(np.moveaxis(labels[box], 0, -1))
        yield np.stack(xs), np.stack(ys)


def train(full_recipe: dict[str, Any], path: Path) -> dict[str, Any]:
    """Train the check weights of ``full_recipe`` and save them atomically to ``path``.

    Returns:
        ``train_seconds`` (data preparation included) and ``final_loss`` (mean Dice loss of the last
        tenth of the steps; -1 is a perfect segmentation).
    """
    import keras

    from workloads.unet3d.loss import weighted_dice_coefficient_loss
    from workloads.unet3d.model import build_unet3d

    start = time.perf_counter()
    r = full_recipe
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(r["seed"])
    model = build_unet3d((r["patch"],) * 3, layout="channels_last", n_channels=N_CHANNELS,
                         n_labels=r["n_labels"], base_filters=r["base_filters"], depth=r["depth"],
                         dtype_policy="float32")

    def loss(y_true, y_pred):
        return weighted_dice_coefficient_loss(y_true, y_pred, channel_axis=-1)

    model.compile(optimizer=keras.optimizers.Adam(r["learning_rate"]), loss=loss, jit_compile=False)
    losses = [float(np.ravel(model.train_on_batch(x, y))[0]) for x, y in training_batches(r)]
    save_atomic(model, path)
    tail = losses[-max(1, len(losses) // 10):]
    return {"train_seconds": time.perf_counter() - start, "final_loss": float(np.mean(tail))}
