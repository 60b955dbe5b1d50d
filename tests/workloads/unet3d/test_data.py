"""Tests of the BraTS data pipeline: synthetic generation, loading, bad files, patches, batches."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from workloads.unet3d import data
from workloads.unet3d.data import (
    BRATS_SHAPE,
    MODALITIES,
    DataError,
    default_cache_dir,
    ensure_synthetic_brats,
    extract_patch,
    find_cases,
    generate_synthetic_brats,
    load_case,
    make_batches,
)

SMALL = (48, 48, 31)
IMAGE = (32, 32, 32)
KEYS = (*MODALITIES, "seg")


def volume_path(case_dir: Path, key: str) -> Path:
    return case_dir / f"{case_dir.name}_{key}.nii.gz"


def read(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def write(path: Path, array: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def brain_mask(image: np.ndarray) -> np.ndarray:
    return (image != 0).any(axis=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    generate_synthetic_brats(root, n_cases=2, shape=SMALL)
    return root


@pytest.fixture
def case(dataset, tmp_path) -> Path:
    """A private copy of one synthetic case, free to damage."""
    source = find_cases(dataset)[0]
    target = tmp_path / "data" / source.name
    shutil.copytree(source, target)
    return target


# --- generation -------------------------------------------------------------------------------


def test_generator_writes_brats_layout_of_real_nifti_files(dataset):
    cases = find_cases(dataset)
    assert [c.name for c in cases] == ["Brats17_SYN_001_1", "Brats17_SYN_002_1"]
    for case_dir in cases:
        assert sorted(p.name for p in case_dir.iterdir()) == sorted(
            f"{case_dir.name}_{key}.nii.gz" for key in KEYS
        )
        for key in KEYS:
            image = nib.load(volume_path(case_dir, key))
            assert isinstance(image, nib.Nifti1Image)
            assert image.shape == SMALL
            np.testing.assert_array_equal(image.affine, np.eye(4))
            assert image.get_data_dtype() == (np.uint8 if key == "seg" else np.int16)
        seg = read(volume_path(case_dir, "seg"))
        assert set(np.unique(seg)) == {0, 1, 2, 4}
        t1 = read(volume_path(case_dir, "t1"))
        brain = t1 != 0
        assert 0.1 < brain.mean() < 0.6
        # Zero margin around the brain on every side, and the tumour inside the brain.
        for axis in range(3):
            edges = np.take(brain, [0, -1], axis=axis)
            assert not edges.any()
        assert brain[seg > 0].all()
        # Each modality is non-zero over the same brain and shows its own contrast.
        means = {}
        for modality in MODALITIES:
            volume = read(volume_path(case_dir, modality))
            np.testing.assert_array_equal(volume != 0, brain)
            means[modality] = [volume[seg == label].mean() for label in (1, 2, 4)]
        assert means["t1ce"][2] > 1.5 * means["t1"][2]  # enhancing rim
        assert means["flair"][1] > 1.5 * means["t1"][1]  # oedema


def test_generation_is_idempotent_and_deterministic(tmp_path):
    root = tmp_path / "syn"
    cases = generate_synthetic_brats(root, n_cases=1, shape=SMALL, seed=3)
    files = sorted(cases[0].iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    original = read(volume_path(cases[0], "flair"))

    assert generate_synthetic_brats(root, n_cases=1, shape=SMALL, seed=3) == cases
    assert {p: p.stat().st_mtime_ns for p in files} == stamps

    volume_path(cases[0], "flair").unlink()
    more = generate_synthetic_brats(root, n_cases=2, shape=SMALL, seed=3)
    assert [c.name for c in more] == ["Brats17_SYN_001_1", "Brats17_SYN_002_1"]
    np.testing.assert_array_equal(read(volume_path(cases[0], "flair")), original)
    for p in files:
        if not p.name.endswith("_flair.nii.gz"):
            assert p.stat().st_mtime_ns == stamps[p]
    assert not np.array_equal(read(volume_path(more[1], "flair")), original)


def test_interrupted_generation_leaves_no_partial_file(tmp_path, monkeypatch):
    real_replace = data.os.replace
    calls = []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(data.os, "replace", replace_then_fail)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_brats(tmp_path, n_cases=1, shape=SMALL)
    monkeypatch.undo()

    case_dir = tmp_path / "Brats17_SYN_001_1"
    names = sorted(p.name for p in case_dir.iterdir())
    assert len(names) == 2 and not any(n.startswith(".") for n in names)
    for path in case_dir.iterdir():
        assert read(path).shape == SMALL

    generate_synthetic_brats(tmp_path, n_cases=1, shape=SMALL)
    assert len(list(case_dir.iterdir())) == 5
    image, labels = load_case(case_dir, IMAGE)
    assert image.shape == (4, *IMAGE) and labels.shape == (3, *IMAGE)


def test_full_size_case_has_brats_shape_and_loads_to_128(tmp_path):
    (case_dir,) = generate_synthetic_brats(tmp_path, n_cases=1)
    for key in KEYS:
        assert nib.load(volume_path(case_dir, key)).shape == BRATS_SHAPE == (240, 240, 155)
    image, labels = load_case(case_dir)
    assert image.shape == (4, 128, 128, 128) and image.dtype == np.float32
    assert labels.shape == (3, 128, 128, 128) and labels.dtype == np.float32
    assert labels.sum(axis=(1, 2, 3)).min() > 0


def test_ensure_synthetic_uses_cache_and_separates_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    root = ensure_synthetic_brats(n_cases=1, shape=SMALL)
    assert root == tmp_path / "cache" / "brats-synthetic-48x48x31-s0"
    assert len(find_cases(root)) == 1
    assert ensure_synthetic_brats(tmp_path / "other", n_cases=1, shape=SMALL).parent == (
        tmp_path / "other"
    )
    monkeypatch.delenv("AUTOTUNE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "autotune"


# --- loading ----------------------------------------------------------------------------------


def test_load_case_shapes_normalisation_and_labels(dataset):
    image, labels = load_case(find_cases(dataset)[0], IMAGE)
    assert image.shape == (4, *IMAGE) and image.dtype == np.float32
    assert labels.shape == (3, *IMAGE) and labels.dtype == np.float32
    brain = brain_mask(image)
    assert 0.3 < brain.mean() < 0.95  # cropped to the brain box, so the brain fills most of it
    for channel in image:
        np.testing.assert_allclose(channel[brain].mean(), 0.0, atol=1e-4)
        np.testing.assert_allclose(channel[brain].std(), 1.0, atol=1e-4)
        assert not channel[~brain].any()
    assert set(np.unique(labels)) == {0.0, 1.0}
    assert (labels.sum(axis=0) <= 1).all()  # the three labels are exclusive
    assert all(labels[k].any() for k in range(3))


def test_load_case_without_labels_needs_no_seg(case):
    volume_path(case, "seg").unlink()
    image, labels = load_case(case, IMAGE, with_labels=False)
    assert image.shape == (4, *IMAGE) and labels is None


def test_crop_box_is_the_union_over_modalities_and_labels_follow(tmp_path):
    shape, box = (20, 24, 16), (slice(4, 14), slice(6, 18), slice(2, 10))
    rng = np.random.default_rng(1)
    volumes = {m: np.zeros(shape, np.int16) for m in MODALITIES}
    # No single modality spans the box: t1 covers its first half in H, t2 the second.
    volumes["t1"][4:14, 6:12, 2:10] = rng.integers(100, 1000, (10, 6, 8))
    volumes["t2"][4:10, 12:18, 2:10] = rng.integers(100, 1000, (6, 6, 8))
    volumes["t1ce"][box] = rng.integers(100, 1000, (10, 12, 8))
    volumes["flair"][5:13, 7:17, 3:9] = rng.integers(100, 1000, (8, 10, 6))
    seg = np.zeros(shape, np.uint8)
    seg[5, 7, 3], seg[13, 17, 9], seg[8, 9, 4] = 1, 2, 4
    case_dir = tmp_path / "Brats17_TEST_1"
    case_dir.mkdir()
    for key, array in {**volumes, "seg": seg}.items():
        write(volume_path(case_dir, key), array)

    crop = (10, 12, 8)
    image, labels = load_case(case_dir, crop)
    brain = np.zeros(crop, bool)
    for volume in volumes.values():
        brain |= volume[box] != 0
    for channel, modality in enumerate(MODALITIES):
        values = volumes[modality][box].astype(np.float64)
        expected = (values - values[brain].mean()) / values[brain].std()
        np.testing.assert_allclose(image[channel], np.where(brain, expected, 0.0), atol=1e-5)
    assert labels.sum() == 3
    assert labels[0, 1, 1, 1] == labels[1, 9, 11, 7] == labels[2, 4, 3, 2] == 1


def test_float_images_and_uncompressed_nii_are_accepted(case):
    t1 = read(volume_path(case, "t1")).astype(np.float32)
    write(case / f"{case.name}_t1.nii", t1)
    volume_path(case, "t1").unlink()
    seg = read(volume_path(case, "seg")).astype(np.float64)
    write(volume_path(case, "seg"), seg)
    image, labels = load_case(case, IMAGE)
    assert image.shape == (4, *IMAGE) and labels.shape == (3, *IMAGE)


def test_find_cases_searches_nested_folders_and_sorts(tmp_path, dataset):
    source = find_cases(dataset)
    shutil.copytree(source[1], tmp_path / "LGG" / "Brats17_B_1")
    shutil.copytree(source[0], tmp_path / "HGG" / "Brats17_Z_1")
    shutil.copytree(source[0], tmp_path / "HGG" / "Brats17_A_1")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a case")
    (tmp_path / "survival.csv").write_text("id,age\n")
    assert [c.relative_to(tmp_path).as_posix() for c in find_cases(tmp_path)] == [
        "HGG/Brats17_A_1",
        "HGG/Brats17_Z_1",
        "LGG/Brats17_B_1",
    ]
    image, _ = load_case(tmp_path / "HGG" / "Brats17_A_1", IMAGE)
    assert image.shape == (4, *IMAGE)


# --- bad input --------------------------------------------------------------------------------


def _missing_modality(case):
    volume_path(case, "t1ce").unlink()
    return "_t1ce.nii.gz"


def _missing_seg(case):
    volume_path(case, "seg").unlink()
    return "_seg.nii.gz"


def _truncated(case):
    path = volume_path(case, "flair")
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path.name


def _truncated_header(case):
    path = volume_path(case, "flair")
    path.write_bytes(path.read_bytes()[:40])
    return path.name


def _random_bytes(case):
    path = volume_path(case, "t2")
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path.name


def _plain_text(case):
    path = volume_path(case, "t1")
    path.write_text("this is not an image\nat all\n")
    return path.name


def _gzipped_garbage(case):
    path = volume_path(case, "t1")
    path.write_bytes(gzip.compress(b"not a nifti header " * 100))
    return path.name


def _empty_file(case):
    path = volume_path(case, "t1")
    path.write_bytes(b"")
    return path.name


def _four_d(case):
    path = volume_path(case, "t1ce")
    write(path, np.ones((*SMALL, 2), np.int16))
    return path.name


def _mismatched_shape(case):
    path = volume_path(case, "t2")
    write(path, read(path)[:, :, :-1])
    return path.name


def _mismatched_seg(case):
    path = volume_path(case, "seg")
    write(path, read(path)[:-2])
    return path.name


def _label_three(case):
    path = volume_path(case, "seg")
    seg = read(path).copy()
    seg[seg == 4] = 3
    write(path, seg)
    return path.name


def _nan_image(case):
    path = volume_path(case, "flair")
    volume = read(path).astype(np.float32)
    volume[10, 10, 10] = np.nan
    write(path, volume)
    return path.name


def _constant_modality(case):
    path = volume_path(case, "t2")
    write(path, np.where(read(volume_path(case, "t1")) != 0, 500, 0).astype(np.int16))
    return path.name


def _all_zero_brain(case):
    for modality in MODALITIES:
        write(volume_path(case, modality), np.zeros(SMALL, np.int16))
    return "_t1.nii.gz"


BAD_CASES = [
    (_missing_modality, "missing t1ce"),
    (_missing_seg, "missing segmentation"),
    (_truncated, "truncated"),
    (_truncated_header, "not a readable NIfTI"),
    (_random_bytes, "not a gzip file"),
    (_plain_text, "not a gzip file"),
    (_gzipped_garbage, "not a readable NIfTI"),
    (_empty_file, "empty file"),
    (_four_d, "expected a 3-D volume"),
    (_mismatched_shape, "differs from"),
    (_mismatched_seg, "differs from"),
    (_label_three, "unknown label values 3"),
    (_nan_image, "NaN"),
    (_constant_modality, "constant over the brain"),
    (_all_zero_brain, "empty brain"),
]


@pytest.mark.parametrize(("damage", "problem"), BAD_CASES, ids=[d.__name__ for d, _ in BAD_CASES])
def test_bad_file_raises_one_line_data_error_naming_it(case, damage, problem):
    name = damage(case)
    with pytest.raises(DataError) as info:
        load_case(case, IMAGE)
    message = str(info.value)
    assert name in message
    assert problem in message
    assert "\n" not in message


def test_bad_file_is_reported_through_make_batches(case):
    name = _truncated(case)
    with pytest.raises(DataError, match=name):
        make_batches(case.parent, batch=1, patch=IMAGE, image_shape=IMAGE, n_batches=1)


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "no_cases"])
def test_find_cases_rejects_bad_data_dirs(tmp_path, kind):
    target = tmp_path / "brats"
    if kind == "file":
        target.write_text("x")
    elif kind == "empty":
        target.mkdir()
    elif kind == "no_cases":
        (target / "Brats17_X_1").mkdir(parents=True)
        (target / "Brats17_X_1" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as info:
        find_cases(target)
    assert str(target) in str(info.value) and "\n" not in str(info.value)


def test_data_error_carries_path_and_pickles():
    error = DataError(Path("/data/x_t1.nii.gz"), "bad\nthing")
    assert str(error) == "/data/x_t1.nii.gz: bad thing"
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.path == error.path


# --- patches and batches ----------------------------------------------------------------------


def _coordinate_volume(shape):
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    return np.stack([*grids, grids[0] + grids[1]]), np.stack(grids)


def test_extract_patch_stays_in_bounds_and_keeps_alignment():
    shape, patch = (10, 7, 5), (4, 7, 2)
    image, labels = _coordinate_volume(shape)
    starts = set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y = extract_patch(image, labels, patch, rng)
        assert x.shape == (4, *patch) and y.shape == (3, *patch)
        np.testing.assert_array_equal(x[:3], y)
        start = tuple(int(x[axis].min()) for axis in range(3))
        for axis in range(3):
            assert start[axis] >= 0 and start[axis] + patch[axis] <= shape[axis]
            np.testing.assert_array_equal(
                np.unique(x[axis]), np.arange(start[axis], start[axis] + patch[axis])
            )
        starts.add(start)
    assert {s[0] for s in starts} == set(range(7)) and {s[2] for s in starts} == set(range(4))


def test_extract_patch_is_deterministic_whole_and_checked():
    image, labels = _coordinate_volume((8, 8, 8))
    a = extract_patch(image, labels, (3, 3, 3), np.random.default_rng(5))
    b = extract_patch(image, labels, (3, 3, 3), np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    whole, whole_labels = extract_patch(image, None, (8, 8, 8), np.random.default_rng(0))
    np.testing.assert_array_equal(whole, image)
    assert whole_labels is None
    with pytest.raises(ValueError, match="larger than the image"):
        extract_patch(image, labels, (9, 8, 8), np.random.default_rng(0))


@pytest.mark.parametrize("channels_last", [False, True])
def test_make_batches_shapes_and_determinism(dataset, channels_last):
    patch = (16, 24, 8)
    kwargs = dict(batch=3, patch=patch, image_shape=IMAGE, n_batches=2, channels_last=channels_last)
    batches = make_batches(dataset, seed=7, **kwargs)
    assert len(batches) == 2
    for x, y in batches:
        if channels_last:
            assert x.shape == (3, *patch, 4) and y.shape == (3, *patch, 3)
        else:
            assert x.shape == (3, 4, *patch) and y.shape == (3, 3, *patch)
        assert x.dtype == y.dtype == np.float32
        assert x.flags.c_contiguous and y.flags.c_contiguous
    again = make_batches(dataset, seed=7, **kwargs)
    other = make_batches(dataset, seed=8, **kwargs)
    for (x, y), (x2, y2) in zip(batches, again, strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(batches[0][0], other[0][0])


def test_make_batches_loads_each_needed_case_once(dataset, monkeypatch):
    loaded = []
    real_load = data.load_case

    def counting_load(case_dir, *args, **kwargs):
        loaded.append(case_dir.name)
        return real_load(case_dir, *args, **kwargs)

    monkeypatch.setattr(data, "load_case", counting_load)
    whole = make_batches(dataset, batch=2, patch=IMAGE, image_shape=IMAGE, n_batches=3)
    assert sorted(loaded) == ["Brats17_SYN_001_1", "Brats17_SYN_002_1"]
    # Samples cycle through the cases: 0, 1, 0, 1, ...; whole images are taken whole.
    assert np.array_equal(whole[0][0][0], whole[1][0][0])
    assert not np.array_equal(whole[0][0][0], whole[0][0][1])

    loaded.clear()
    make_batches(dataset, batch=1, patch=IMAGE, image_shape=IMAGE, n_batches=1)
    assert loaded == ["Brats17_SYN_001_1"]


def test_make_batches_without_labels_and_synthetic_default(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    batches = make_batches(
        None,
        batch=1,
        patch=(16, 16, 16),
        image_shape=IMAGE,
        with_labels=False,
        synthetic_cases=1,
        synthetic_shape=SMALL,
    )
    assert [(x.shape, y) for x, y in batches] == [((1, 4, 16, 16, 16), None)] * 2
    assert find_cases(tmp_path / "brats-synthetic-48x48x31-s0")


def test_make_batches_rejects_patch_larger_than_image(dataset):
    with pytest.raises(ValueError, match="larger than image_shape"):
        make_batches(dataset, batch=1, patch=(64, 64, 64), image_shape=IMAGE)
