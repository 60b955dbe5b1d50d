"""A Keras model's inputs: what each one takes (name, shape, dtype, value range) and arrays for them.

An input is synthesized (seeded: floats standard normal, integers from 0 below the input dimension of
the Embedding that reads them, else small non-negative integers, booleans at random) or read from the
user's ``.npy``/``.npz`` file, whose batch is cut or tiled to the trial's batch. Every problem with that
file is :class:`~workloads.harness.BadInput` with one line naming it. This module imports numpy only.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workloads.harness import BadInput

# Exclusive upper bound of a synthetic integer input that feeds no Embedding: small non-negative values,
# valid as indices or counts for most layers that read integers.
SMALL_INT_HIGH = 10


@dataclass(frozen=True)
class InputSpec:
    """One input of a model.

    Attributes:
        name: The input's name (its key in an ``.npz`` file).
        shape: Shape without the batch dimension; None where the model takes any size.
        dtype: Its dtype name, e.g. ``float32``, ``int32``.
        high: For an integer input, the exclusive upper bound of its values (the input dimension of the
            Embedding that reads it), or None for :data:`SMALL_INT_HIGH`.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    high: int | None = None

    def concrete(self, dynamic_size: int) -> tuple[int, ...]:
        """The shape with every dynamic dimension set to ``dynamic_size``."""
        return tuple(dynamic_size if d is None else int(d) for d in self.shape)

    def describe(self) -> str:
        """E.g. ``tokens: (None, 128) int32``."""
        return f"{self.name}: {tuple(self.shape)} {self.dtype}"


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a Keras dtype name (bfloat16 through ml_dtypes, which TensorFlow ships)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(name)
    except TypeError:
        raise BadInput(f"model input dtype {name!r} is not a numeric type autotune can feed") from None


def synthetic(specs: list[InputSpec], batch: int, dynamic_size: int, seed: int) -> list[np.ndarray]:
    """Seeded arrays for ``specs``, ``batch`` samples each, dynamic dimensions ``dynamic_size``.

    Raises:
        BadInput: An input of a type that cannot be synthesized (strings).
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = (batch, *spec.concrete(dynamic_size))
        dtype = numpy_dtype(spec.dtype)
        if dtype == np.bool_:
            arrays.append(rng.random(shape) < 0.5)
        elif np.issubdtype(dtype, np.integer):
            high = spec.high if spec.high is not None else SMALL_INT_HIGH
            high = min(high, int(np.iinfo(dtype).max) + 1)
            arrays.append(rng.integers(0, max(high, 1), shape).astype(dtype))
        elif spec.dtype == "bfloat16" or np.issubdtype(dtype, np.floating):
            arrays.append(rng.standard_normal(shape, dtype=np.float32).astype(dtype))
        else:
            raise BadInput(f"model input {spec.describe()}: cannot synthesize {spec.dtype} values; "
                           "give them with --set inputs=FILE.npz")
    return arrays


def read_file(path: Path, specs: list[InputSpec]) -> list[np.ndarray]:
    """The arrays of an ``.npy`` (one-input models) or ``.npz`` file, one per spec, checked.

    ``.npz`` arrays are matched to the inputs by name when every input's name is a key, else by position
    (``np.savez(f, a, b)`` names them ``arr_0``, ``arr_1``). Each array's first axis is the batch.

    Raises:
        BadInput: The file is missing, unreadable, holds pickled objects, or an array does not fit its
            input (count, rank, fixed dimensions, dtype); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: inputs file not found" if not path.exists() else f"{path}: not a file")
    if path.suffix not in (".npy", ".npz"):
        raise BadInput(f"{path}: not a .npy or .npz inputs file (save arrays with np.save or np.savez)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            found = {"arr_0": loaded}
        else:
            with loaded:
                found = {key: loaded[key] for key in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        problem = " ".join(str(exc).split()) or type(exc).__name__
        raise BadInput(f"{path}: not a readable .npy/.npz file without pickles ({problem})") from None
    names = [s.name for s in specs]
    if all(name in found for name in names):
        arrays = [found[name] for name in names]
    elif len(found) == len(specs):
        arrays = list(found.values())
    else:
        raise BadInput(f"{path}: holds {len(found)} array(s) ({', '.join(found)}), the model takes "
                       f"{len(specs)} input(s) ({', '.join(names)}); name the arrays after the inputs")
    for spec, array in zip(specs, arrays, strict=True):
        _check_array(path, spec, array)
    return arrays


def _check_array(path: Path, spec: InputSpec, array: np.ndarray) -> None:
    if array.ndim != len(spec.shape) + 1 or array.shape[0] < 1:
        raise BadInput(f"{path}: array for input {spec.describe()} has shape {array.shape}; "
                       f"expected (batch, {', '.join(str(d) for d in spec.shape)})")
    for want, got in zip(spec.shape, array.shape[1:], strict=True):
        if want is not None and want != got:
            raise BadInput(f"{path}: array for input {spec.describe()} has shape {array.shape}")
    want = numpy_dtype(spec.dtype)
    ok = array.dtype == want or (array.dtype.kind in "biuf" and np.can_cast(array.dtype, want, "same_kind"))
    if not ok:
        raise BadInput(f"{path}: array for input {spec.describe()} has dtype {array.dtype}, "
                       f"which does not convert to {spec.dtype}")
    if spec.high is not None and array.dtype.kind in "iu" and array.size and (
        array.min() < 0 or array.max() >= spec.high
    ):
        raise BadInput(f"{path}: array for input {spec.describe()} holds values outside 0..{spec.high - 1} "
                       "(its Embedding's input_dim)")


def fit_batch(arrays: list[np.ndarray], specs: list[InputSpec], batch: int) -> list[np.ndarray]:
    """Each array cut, or tiled, to ``batch`` samples along its first axis, in its input's dtype."""
    fitted = []
    for spec, array in zip(specs, arrays, strict=True):
        repeats = math.ceil(batch / array.shape[0])
        tiled = np.concatenate([array] * repeats) if repeats > 1 else array
        fitted.append(np.ascontiguousarray(tiled[:batch]).astype(numpy_dtype(spec.dtype), copy=False))
    return fitted
