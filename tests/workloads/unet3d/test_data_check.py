"""Checking a whole BraTS folder before a study: every case read once, unchanged cases cached."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from workloads.harness import BadInput
from workloads.unet3d.data import DataError, generate_synthetic_brats, make_batches
from workloads.unet3d.data_check import check_dataset
from workloads.unet3d.trial import check

SHAPE = (48, 48, 32)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    generate_synthetic_brats(tmp_path / "brats", n_cases=3, shape=SHAPE)
    return tmp_path / "brats"


def test_every_case_is_read_once_then_remembered(folder: Path, tmp_path: Path) -> None:
    first = check_dataset(folder, with_labels=True, cache_dir=tmp_path / "cache")
    again = check_dataset(folder, with_labels=True, cache_dir=tmp_path / "cache")

    assert (first.cases, first.read, first.cached) == (3, 3, 0)
    assert (again.cases, again.read, again.cached) == (3, 0, 3)


def test_a_changed_file_is_read_again(folder: Path, tmp_path: Path) -> None:
    check_dataset(folder, with_labels=False, cache_dir=tmp_path / "cache")
    t2 = sorted(folder.glob("*/*_t2.nii.gz"))[1]
    os.utime(t2, ns=(t2.stat().st_atime_ns, t2.stat().st_mtime_ns + 10**9))

    again = check_dataset(folder, with_labels=False, cache_dir=tmp_path / "cache")

    assert (again.read, again.cached) == (1, 2)


def test_labels_are_checked_when_training_needs_them(folder: Path, tmp_path: Path) -> None:
    check_dataset(folder, with_labels=False, cache_dir=tmp_path / "cache")
    next(folder.glob("*/*_seg.nii.gz")).write_bytes(b"\x1f\x8bnot really gzip")

    assert check_dataset(folder, with_labels=False, cache_dir=tmp_path / "cache").read == 1
    with pytest.raises(DataError, match=r"_seg\.nii\.gz: "):
        check_dataset(folder, with_labels=True, cache_dir=tmp_path / "cache")


def test_a_bad_file_in_a_case_no_trial_reads_is_found(folder: Path, tmp_path: Path) -> None:
    last = sorted(folder.glob("*/*_flair.nii.gz"))[-1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    # A one-sample trial loads only the first case, so it would not notice.
    make_batches(folder, batch=1, patch=(16, 16, 16), image_shape=(32, 32, 32), n_batches=1, with_labels=False)

    with pytest.raises(DataError, match=f"{last.name}: corrupt or truncated voxel data"):
        check_dataset(folder, with_labels=False, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError):  # the failed case is not remembered as good
        check_dataset(folder, with_labels=False, cache_dir=tmp_path / "cache")


def test_the_workload_check_turns_bad_values_and_files_into_bad_input(folder: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BadInput, match="patch 33 must be a multiple of 16 per side at depth 5"):
        check({"patch": "33", "data_dir": str(folder)})
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    next(broken.glob("*/*_t1.nii.gz")).unlink()
    with pytest.raises(BadInput, match="missing t1 modality file"):
        check({"patch": "16", "depth": 3, "image_size": 32, "data_dir": str(broken)})

    found = check({"patch": "16", "depth": 3, "image_size": 32, "data_dir": str(folder)})

    assert found["data"]["cases"] == 3
