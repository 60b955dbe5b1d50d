"""BraTS data for the 3D U-Net workload: read real case folders, or generate synthetic ones.

The pipeline follows the reference preprocessing of ellisdg/3DUnetCNN (bias-field correction
skipped): crop each case to the non-zero brain box, resample it to ``image_shape``, normalise each
modality to mean 0 and std 1 over the brain, and map labels 1, 2, 4 to three binary channels.

BraTS cannot be downloaded here, so :func:`generate_synthetic_brats` writes a dataset with the same
layout and file format (real NIfTI files written by nibabel); the same loading code then runs on
real and synthetic data alike.

Every problem with an input file raises :class:`DataError`, whose message is one line that names
the file. This module imports numpy, scipy and nibabel only, never TensorFlow.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from scipy import ndimage

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BRATS_SHAPE",
    "LABELS",
    "MODALITIES",
    "CaseVolumes",
    "DataError",
    "default_cache_dir",
    "ensure_synthetic_brats",
    "extract_patch",
    "find_cases",
    "generate_synthetic_brats",
    "load_case",
    "make_batches",
    "read_case",
]

MODALITIES = ("t1", "t1ce", "flair", "t2")
"""Image channels, in the order they are stacked."""

LABELS = (1, 2, 4)
"""BraTS label values (necrotic core, oedema, enhancing tumour), one output channel each."""

BRATS_SHAPE = (240, 240, 155)
"""Voxel grid of every BraTS volume (1 mm isotropic)."""

_SEG = "seg"
_SUFFIXES = (".nii.gz", ".nii")
_ALLOWED_LABELS = (0, *LABELS)
_SYNTHETIC_DIR = "brats-synthetic"
_SYNTHETIC_PREFIX = "Brats17_SYN"

# Everything nibabel, gzip and zlib raise on a file that is not NIfTI, is corrupt or is truncated;
# truncated gzip data often only fails when the voxels are read, hence the same tuple for both.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(Exception):
    """Bad input data.

    ``str(exc)`` is one line, ``"<path>: <problem>"``, naming the offending file or folder.

    Args:
        path: The file or folder at fault.
        problem: What is wrong with it, one line.

    Attributes:
        path: The file or folder at fault.
        problem: What is wrong with it.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def default_cache_dir() -> Path:
    """Return the autotune cache folder.

    Returns:
        ``$AUTOTUNE_CACHE`` if it is set and not empty, else ``~/.cache/autotune``.
    """
    env = os.environ.get("AUTOTUNE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "autotune"


# ---------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------

# Tissue classes of the synthetic brain, indices into _INTENSITY.
_BACKGROUND, _CSF, _GREY, _WHITE, _OEDEMA, _NECROTIC, _ENHANCING = range(7)
_TISSUE_LABEL = np.array([0, 0, 0, 0, 2, 1, 4], dtype=np.uint8)
# Mean intensity of each tissue class (rows) in each modality (columns, MODALITIES order), chosen
# to mimic the usual contrasts: CSF dark in T1 and FLAIR and bright in T2, oedema bright in FLAIR
# and T2, the enhancing rim bright in T1ce only.
_INTENSITY = np.array(
    [
        [0, 0, 0, 0],
        [250, 260, 120, 1400],
        [550, 580, 600, 800],
        [750, 780, 480, 550],
        [450, 470, 1050, 1200],
        [300, 320, 700, 1500],
        [560, 1300, 850, 900],
    ],
    dtype=np.float32,
)


def _case_name(index: int) -> str:
    return f"{_SYNTHETIC_PREFIX}_{index + 1:03d}_1"


def _smooth_field(
    rng: np.random.Generator,
    axes: Sequence[np.ndarray],
    shape: tuple[int, int, int],
    n_terms: int = 4,
    max_freq: float = 2.5,
) -> np.ndarray:
    """A smooth random field in [-1, 1]: a sum of separable cosines over broadcastable axes."""
    weights = rng.uniform(0.5, 1.0, n_terms).astype(np.float32)
    weights /= weights.sum()
    field = np.zeros(shape, dtype=np.float32)
    term = np.empty(shape, dtype=np.float32)
    for weight in weights:
        x, y, z = (
            np.cos(np.pi * rng.uniform(0.3, max_freq) * u + rng.uniform(0, 2 * np.pi)) for u in axes
        )
        np.multiply(weight * x * y, z, out=term)
        field += term
    return field


def _ellipsoid_radius(axes: Sequence[np.ndarray], centre, semi_axes) -> np.ndarray:
    """Normalised ellipsoidal distance: 1 on the surface of the ellipsoid."""
    x, y, z = (((u - c) / a) ** 2 for u, c, a in zip(axes, centre, semi_axes, strict=True))
    radius = np.add(x + y, z, dtype=np.float32)
    return np.sqrt(radius, out=radius)


def _synthesize_case(
    shape: tuple[int, int, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Volumes of one synthetic case: four int16 modalities and a uint8 segmentation."""
    # Coordinates in voxels, one broadcastable 1-D array per axis.
    axes = [
        np.arange(n, dtype=np.float32).reshape([-1 if i == k else 1 for i in range(3)])
        for k, n in enumerate(shape)
    ]
    unit_axes = [2 * u / max(n - 1, 1) - 1 for u, n in zip(axes, shape, strict=True)]
    dims = np.array(shape, dtype=np.float32)

    centre = dims / 2 - 0.5 + rng.uniform(-0.02, 0.02, 3) * dims
    semi = dims * np.array([0.36, 0.42, 0.40]) * rng.uniform(0.96, 1.04, 3)
    rho = _ellipsoid_radius(axes, centre, semi)
    rho += 0.04 * _smooth_field(rng, unit_axes, shape)
    brain = rho < 1.0

    tissue = np.where(rho < 0.82, _WHITE, _GREY).astype(np.uint8)
    np.copyto(tissue, _CSF, where=rho >= 0.96)
    for side in (-1, 1):
        ventricle_centre = centre + semi * np.array([0.12 * side, -0.05, 0.05])
        ventricle = _ellipsoid_radius(axes, ventricle_centre, semi * np.array([0.07, 0.22, 0.12]))
        np.copyto(tissue, _CSF, where=ventricle < 1.0)

    # A tumour: oedema (2) around a core of enhancing rim (4) and necrotic centre (1).
    direction = rng.normal(size=3)
    direction *= rng.uniform(0.15, 0.4) / np.linalg.norm(direction)
    tumour_centre = centre + direction * semi
    tumour_size = 0.3 * semi.mean() * rng.uniform(0.8, 1.2) * rng.uniform(0.85, 1.15, 3)
    t = _ellipsoid_radius(axes, tumour_centre, tumour_size)
    edge = _smooth_field(rng, unit_axes, shape, max_freq=4.0)
    np.copyto(tissue, _OEDEMA, where=t < 1.0 + 0.2 * edge)
    t -= 0.06 * _smooth_field(rng, unit_axes, shape, max_freq=4.0)
    np.copyto(tissue, _ENHANCING, where=t < 0.6)
    np.copyto(tissue, _NECROTIC, where=t < 0.38)
    np.copyto(tissue, _BACKGROUND, where=~brain)

    volumes = {_SEG: _TISSUE_LABEL[tissue]}
    spread = np.empty(shape, dtype=np.float32)
    for channel, modality in enumerate(MODALITIES):
        image = _INTENSITY[:, channel][tissue]
        bias = _smooth_field(rng, unit_axes, shape, n_terms=3, max_freq=1.0)
        bias *= 0.1
        bias += 1.0
        image *= bias
        # Noise: 5 % of the signal plus a constant floor.
        np.multiply(image, 0.05, out=spread)
        spread += 15.0
        spread *= rng.standard_normal(shape, dtype=np.float32)
        image += spread
        # The brain must stay non-zero everywhere: zero is what marks background in BraTS.
        np.clip(image, 1.0, np.iinfo(np.int16).max, out=image)
        image *= brain
        volumes[modality] = np.rint(image, out=image).astype(np.int16)
    return volumes


def _save_atomic(data: np.ndarray, path: Path) -> None:
    """Write a NIfTI file so that ``path`` either does not exist or is complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.nii.gz")
    os.close(fd)
    try:
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_complete(path: Path, shape: tuple[int, int, int]) -> bool:
    if not path.is_file():
        return False
    try:
        return tuple(nib.load(path).shape) == tuple(shape)
    except _READ_ERRORS:
        return False


def generate_synthetic_brats(
    root: Path,
    *,
    n_cases: int = 2,
    shape: tuple[int, int, int] = BRATS_SHAPE,
    seed: int = 0,
) -> list[Path]:
    """Write a synthetic dataset in the BraTS layout.

    Each case folder ``root/<case>/`` holds ``<case>_t1.nii.gz``, ``_t1ce``, ``_flair``, ``_t2``
    and ``_seg``: int16 images and a uint8 segmentation with a 1 mm affine. Each case is a
    brain-like ellipsoid (zeros outside, with a margin) with CSF, grey and white matter and a
    tumour carrying labels 2 (oedema) around 4 (enhancing rim) around 1 (necrotic core); each
    modality has its own tissue contrast, a smooth bias field and noise.

    Generation is idempotent: files already present with the right shape are kept, and each file
    is written to a temporary name and renamed, so an interrupted run never leaves a partial
    file under a final name. Case ``i`` depends only on ``seed`` and ``i``.

    Args:
        root: Dataset folder; created if missing.
        n_cases: Number of cases, named ``Brats17_SYN_001_1``, ``Brats17_SYN_002_1``, ...
        shape: Voxel grid of every volume.
        seed: Seed of the random generator.

    Returns:
        The case folders, sorted.

    Raises:
        ValueError: If ``n_cases`` or ``shape`` is invalid.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    shape = _check_shape(shape, "shape", minimum=8)
    root = Path(root)
    cases = []
    for index in range(n_cases):
        name = _case_name(index)
        case_dir = root / name
        case_dir.mkdir(parents=True, exist_ok=True)
        paths = {key: case_dir / f"{name}_{key}.nii.gz" for key in (*MODALITIES, _SEG)}
        missing = [key for key, path in paths.items() if not _is_complete(path, shape)]
        if missing:
            volumes = _synthesize_case(shape, np.random.default_rng([seed, index]))
            for key in missing:
                _save_atomic(volumes[key], paths[key])
        cases.append(case_dir)
    return cases


def ensure_synthetic_brats(
    cache_dir: Path | None = None,
    *,
    n_cases: int = 2,
    shape: tuple[int, int, int] = BRATS_SHAPE,
    seed: int = 0,
) -> Path:
    """Make sure a synthetic BraTS dataset exists in the cache, and return its folder.

    The default dataset (BraTS shape, seed 0) lives in ``<cache>/brats-synthetic``; any other
    shape or seed gets its own folder, ``<cache>/brats-synthetic-<D>x<H>x<W>-s<seed>``, so that
    datasets of different shapes never mix.

    Args:
        cache_dir: Cache folder; :func:`default_cache_dir` if None.
        n_cases: Number of cases the dataset must have at least.
        shape: Voxel grid of every volume.
        seed: Seed of the random generator.

    Returns:
        The dataset root, ready for :func:`find_cases`.
    """
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    shape = _check_shape(shape, "shape", minimum=8)
    name = _SYNTHETIC_DIR
    if shape != BRATS_SHAPE or seed != 0:
        name += f"-{'x'.join(map(str, shape))}-s{seed}"
    root = cache / name
    generate_synthetic_brats(root, n_cases=n_cases, shape=shape, seed=seed)
    return root


# ---------------------------------------------------------------------------------------------
# Reading and preprocessing
# ---------------------------------------------------------------------------------------------


def _check_shape(shape: Sequence[int], what: str, *, minimum: int = 1) -> tuple[int, int, int]:
    values = tuple(shape)
    if len(values) != 3 or not all(
        isinstance(n, int | np.integer) and n >= minimum for n in values
    ):
        raise ValueError(f"{what} must be three integers >= {minimum}, got {shape!r}")
    return tuple(int(n) for n in values)  # type: ignore[return-value]


def _volume_files(folder: Path, key: str) -> list[Path]:
    return sorted(
        path
        for suffix in _SUFFIXES
        for path in folder.glob(f"*_{key}{suffix}")
        if not path.name.startswith(".") and path.is_file()
    )


def _is_case_dir(folder: Path) -> bool:
    return any(_volume_files(folder, key) for key in MODALITIES)


def find_cases(data_dir: Path) -> list[Path]:
    """List the case folders of a BraTS dataset.

    A case folder is a folder holding at least one ``*_<modality>.nii.gz`` (or ``.nii``) file.
    They are searched for at any depth, so both a flat dataset and the BraTS 2017 training layout
    (``HGG/<case>``, ``LGG/<case>``) work.

    Args:
        data_dir: Dataset root.

    Returns:
        The case folders, sorted by path.

    Raises:
        DataError: If ``data_dir`` is missing, is not a folder or holds no case folder.
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(data_dir, "data folder not found")
    if not data_dir.is_dir():
        raise DataError(data_dir, "data path is not a folder")
    cases = sorted(
        Path(folder)
        for folder, _dirs, _files in os.walk(data_dir)
        if Path(folder) != data_dir and _is_case_dir(Path(folder))
    )
    if not cases:
        raise DataError(
            data_dir,
            "no BraTS case folders found (expected sub-folders holding "
            "<case>_t1.nii.gz, <case>_t1ce.nii.gz, <case>_flair.nii.gz, <case>_t2.nii.gz)",
        )
    return cases


def _find_volume(case_dir: Path, key: str) -> Path:
    """The one file of a case holding ``key`` (a modality or "seg")."""
    preferred = case_dir / f"{case_dir.name}_{key}.nii.gz"
    if preferred.is_file():
        return preferred
    found = _volume_files(case_dir, key)
    if not found:
        what = "segmentation" if key == _SEG else f"{key} modality"
        raise DataError(preferred, f"missing {what} file (no *_{key}.nii.gz in {case_dir})")
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise DataError(case_dir, f"several {key} files: {names}")
    return found[0]


def _describe(exc: BaseException, path: Path) -> str:
    """One line for a library exception, without the path that DataError already shows."""
    text = str(exc)
    for quoted in (f'"{path}"', f"'{path}'", str(path)):
        text = text.replace(quoted, "the file")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_volume(path: Path) -> np.ndarray:
    """Read a 3-D NIfTI volume, turning every way it can fail into a DataError."""
    try:
        with path.open("rb") as file:
            magic = file.read(2)
    except OSError as exc:
        raise DataError(path, f"cannot open ({_describe(exc, path)})") from exc
    if not magic:
        raise DataError(path, "empty file")
    if path.name.endswith(".gz") and magic != _GZIP_MAGIC:
        raise DataError(path, "not a gzip file, though named .gz")
    try:
        image = nib.load(path)
    except _READ_ERRORS as exc:
        raise DataError(path, f"not a readable NIfTI file ({_describe(exc, path)})") from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(path, f"not a NIfTI image ({type(image).__name__})")
    shape = tuple(image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataError(path, f"expected a 3-D volume, got shape {tuple(image.shape)}")
    try:
        data = np.asanyarray(image.dataobj)
    except MemoryError as exc:
        raise DataError(path, f"header claims shape {shape}, too large to read") from exc
    except _READ_ERRORS as exc:
        raise DataError(path, f"corrupt or truncated voxel data ({_describe(exc, path)})") from exc
    if data.dtype.kind not in "iuf":
        raise DataError(path, f"unsupported voxel type {data.dtype}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataError(path, "contains NaN or infinite values")
    return data.reshape(shape)


def _brain_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the True voxels of a non-empty 3-D mask."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _resample(volume: np.ndarray, shape: tuple[int, int, int], order: int) -> np.ndarray:
    if volume.shape == shape:
        return volume.copy()
    factors = [out / n for out, n in zip(shape, volume.shape, strict=True)]
    out = np.empty(shape, dtype=volume.dtype)
    # grid_mode=False aligns the centres of the corner voxels of input and output.
    ndimage.zoom(volume, factors, output=out, order=order, mode="nearest", grid_mode=False)
    return out


@dataclass(frozen=True)
class CaseVolumes:
    """The volumes of one case as stored, checked but not yet cropped or resampled.

    Attributes:
        paths: Modality -> its file, and ``"seg"`` -> the segmentation when it was read.
        volumes: One 3-D array per modality, in :data:`MODALITIES` order, all of one shape.
        brain: Voxels non-zero in any modality.
        seg: The segmentation (only 0, 1, 2, 4), or None when it was not read.
    """

    paths: dict[str, Path]
    volumes: list[np.ndarray]
    brain: np.ndarray
    seg: np.ndarray | None


def read_case(case_dir: Path, *, with_labels: bool = True) -> CaseVolumes:
    """Read every volume of one case once and check it: what a trial needs to load it without surprise.

    Raises:
        DataError: A file is missing, unreadable, corrupt, truncated, not 3-D, of another shape than the
            case's other volumes; the brain is empty or a modality constant over it; the segmentation
            holds unknown labels.
    """
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise DataError(case_dir, "case folder not found")
    paths = {modality: _find_volume(case_dir, modality) for modality in MODALITIES}
    if with_labels:
        paths[_SEG] = _find_volume(case_dir, _SEG)

    volumes: list[np.ndarray] = []
    for modality in MODALITIES:
        volume = _read_volume(paths[modality])
        if volumes and volume.shape != volumes[0].shape:
            raise DataError(
                paths[modality],
                f"shape {volume.shape} differs from {volumes[0].shape} of {paths['t1'].name}",
            )
        volumes.append(volume)

    brain = volumes[0] != 0
    for volume in volumes[1:]:
        brain |= volume != 0
    if not brain.any():
        names = ", ".join(paths[m].name for m in MODALITIES)
        raise DataError(case_dir, f"empty brain: every modality is all zeros ({names})")
    for modality, volume in zip(MODALITIES, volumes, strict=True):
        values = volume[brain]
        if values.min() == values.max():
            raise DataError(paths[modality], f"constant over the brain (value {values[0]:g})")

    seg = None
    if with_labels:
        seg = _read_volume(paths[_SEG])
        if seg.shape != volumes[0].shape:
            raise DataError(
                paths[_SEG], f"shape {seg.shape} differs from {volumes[0].shape} of {paths['t1'].name}"
            )
        unknown = np.ones(seg.shape, dtype=bool)
        for label in _ALLOWED_LABELS:
            unknown &= seg != label
        if unknown.any():
            values = np.unique(seg[unknown])
            shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
            raise DataError(paths[_SEG], f"unknown label values {shown} (expected 0, 1, 2, 4)")
    return CaseVolumes(paths=paths, volumes=volumes, brain=brain, seg=seg)


def load_case(
    case_dir: Path,
    image_shape: tuple[int, int, int] = (128, 128, 128),
    *,
    with_labels: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load and preprocess one BraTS case.

    Steps: crop all volumes to the bounding box of the brain (voxels non-zero in any modality),
    resample to ``image_shape`` (linear for images, nearest for labels), normalise each modality
    to mean 0 and std 1 over the brain voxels (background set to 0), and turn labels 1, 2, 4 into
    three binary channels.

    Images may be stored as integers (as BraTS does) or floats. The segmentation may have any
    numeric type but must hold only the values 0, 1, 2 and 4.

    Args:
        case_dir: Case folder holding ``<case>_<modality>.nii.gz`` and ``<case>_seg.nii.gz``.
        image_shape: Voxel grid of the output.
        with_labels: Whether to read the segmentation; if False it need not exist.

    Returns:
        ``(image, labels)``: image float32 of shape ``(4, *image_shape)`` in :data:`MODALITIES`
        order, labels float32 of shape ``(3, *image_shape)`` for labels 1, 2, 4, or None.

    Raises:
        DataError: If a file is missing, unreadable, corrupt, truncated, not 3-D, of another shape
            than the case's other volumes, if the segmentation holds unknown labels, or if the
            brain is empty or a modality is constant over it.
        ValueError: If ``image_shape`` is invalid.
    """
    image_shape = _check_shape(image_shape, "image_shape")
    case = read_case(case_dir, with_labels=with_labels)
    paths, volumes = case.paths, case.volumes
    box = _brain_box(case.brain)
    brain = case.brain[box]

    image = np.empty((len(MODALITIES), *image_shape), dtype=np.float32)
    for channel, volume in enumerate(volumes):
        image[channel] = _resample(volume[box].astype(np.float32), image_shape, order=1)
    del volumes
    # Statistics over the brain of the resampled image, so that the output is exactly
    # standardised there.
    brain = (image != 0).any(axis=0)
    for channel, modality in enumerate(MODALITIES):
        values = image[channel][brain]
        mean = values.mean(dtype=np.float64)
        std = values.std(dtype=np.float64)
        if not std > 0:
            raise DataError(paths[modality], "constant over the brain after resampling")
        image[channel] -= mean
        image[channel] /= std
        image[channel] *= brain

    if case.seg is None:
        return image, None
    label_map = _resample(case.seg[box].astype(np.uint8), image_shape, order=0)
    labels = np.stack([label_map == label for label in LABELS]).astype(np.float32)
    return image, labels


# ---------------------------------------------------------------------------------------------
# Patches and batches
# ---------------------------------------------------------------------------------------------


def extract_patch(
    image: np.ndarray,
    labels: np.ndarray | None,
    patch: tuple[int, int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cut the same random patch out of an image and its labels.

    Args:
        image: Channels-first volume, shape ``(C, D, H, W)``.
        labels: Channels-first labels with the same spatial shape, or None.
        patch: Patch size ``(d, h, w)``; equal to ``(D, H, W)`` returns the whole volume.
        rng: Source of the patch position (uniform over all positions inside the volume).

    Returns:
        ``(image_patch, labels_patch)``, new arrays of shape ``(C, d, h, w)``; labels None if
        ``labels`` is None.

    Raises:
        ValueError: If ``patch`` is invalid or larger than the volume on some axis.
    """
    patch = _check_shape(patch, "patch")
    spatial = tuple(image.shape[1:])
    if image.ndim != 4:
        raise ValueError(f"image must be (channels, D, H, W), got shape {image.shape}")
    if labels is not None and tuple(labels.shape[1:]) != spatial:
        raise ValueError(f"labels shape {labels.shape} does not match image shape {image.shape}")
    if any(p > n for p, n in zip(patch, spatial, strict=True)):
        raise ValueError(f"patch {patch} is larger than the image {spatial}")
    starts = [int(rng.integers(0, n - p + 1)) for p, n in zip(patch, spatial, strict=True)]
    box = (slice(None), *(slice(s, s + p) for s, p in zip(starts, patch, strict=True)))
    return image[box].copy(), None if labels is None else labels[box].copy()


def make_batches(
    data_dir: Path | None,
    *,
    batch: int,
    patch: tuple[int, int, int],
    image_shape: tuple[int, int, int] = (128, 128, 128),
    n_batches: int = 2,
    channels_last: bool = False,
    seed: int = 0,
    with_labels: bool = True,
    synthetic_cases: int = 2,
    synthetic_shape: tuple[int, int, int] = BRATS_SHAPE,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Build batches of preprocessed patches.

    Sample ``k`` (counting across batches) comes from case ``k mod n_cases`` in sorted order, at a
    random position drawn from a generator seeded by ``(seed, k)``, so the result depends only on
    the arguments. Each case is loaded once, and only the cases needed are loaded.

    Args:
        data_dir: BraTS dataset root; None uses the synthetic dataset of
            :func:`ensure_synthetic_brats` (in the default cache, seed 0), generating it if needed.
        batch: Samples per batch.
        patch: Patch size; equal to ``image_shape`` for whole images.
        image_shape: Voxel grid each case is resampled to.
        n_batches: Number of batches.
        channels_last: Return ``(batch, *patch, C)`` arrays instead of ``(batch, C, *patch)``.
        seed: Seed of the patch positions.
        with_labels: Whether to return labels; if False, ``y`` is None and no seg file is read.
        synthetic_cases: Number of synthetic cases when ``data_dir`` is None.
        synthetic_shape: Voxel grid of the synthetic volumes when ``data_dir`` is None.

    Returns:
        ``n_batches`` pairs ``(x, y)``: x float32 with 4 channels, y float32 with 3 channels, or
        None when ``with_labels`` is False.

    Raises:
        DataError: If the data is missing or bad (see :func:`find_cases`, :func:`load_case`).
        ValueError: If an argument is invalid, such as a patch larger than ``image_shape``.
    """
    if batch < 1 or n_batches < 1:
        raise ValueError(f"batch and n_batches must be >= 1, got {batch} and {n_batches}")
    image_shape = _check_shape(image_shape, "image_shape")
    patch = _check_shape(patch, "patch")
    if any(p > n for p, n in zip(patch, image_shape, strict=True)):
        raise ValueError(f"patch {patch} is larger than image_shape {image_shape}")
    if data_dir is None:
        data_dir = ensure_synthetic_brats(n_cases=synthetic_cases, shape=synthetic_shape)
    cases = find_cases(data_dir)

    total = batch * n_batches
    x = np.empty((total, len(MODALITIES), *patch), dtype=np.float32)
    y = np.empty((total, len(LABELS), *patch), dtype=np.float32) if with_labels else None
    rngs = [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(total)]
    for case_index, case_dir in enumerate(cases[:total]):
        image, labels = load_case(case_dir, image_shape, with_labels=with_labels)
        for sample in range(case_index, total, len(cases)):
            x[sample], labels_patch = extract_patch(image, labels, patch, rngs[sample])
            if y is not None:
                y[sample] = labels_patch
        del image, labels

    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        y = None if y is None else np.ascontiguousarray(np.moveaxis(y, 1, -1))
    return [
        (x[start : start + batch], None if y is None else y[start : start + batch])
        for start in range(0, total, batch)
    ]
