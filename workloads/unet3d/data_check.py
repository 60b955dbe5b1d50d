"""Check a BraTS folder once, before any trial: every case's files read in full, results cached.

A trial loads only the few cases it needs for its batches, so a corrupt file in case 200 would never
be noticed there, and one in case 1 would fail every trial with the same message. The driver instead
asks the workload to check its inputs before the study starts (``--check``): each case's volumes are
read once (:func:`workloads.unet3d.data.read_case`: headers and voxel data, shapes, brain, labels).

Reading a BraTS-sized folder (285 cases, about 1,400 compressed volumes) takes a while, so a case
that passed is remembered in ``<cache>/checked-data/<folder hash>.json`` by the size and modification
time of each of its files: the next check reads only cases whose files changed. Cases are read by a
few threads, since zlib and numpy release the GIL while they decompress and compare.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from workloads.unet3d.data import (
    BRATS_SHAPE,
    MODALITIES,
    DataError,
    default_cache_dir,
    ensure_synthetic_brats,
    find_cases,
    read_case,
)

CHECK_CACHE_DIR = "checked-data"
CHECK_CACHE_SCHEMA = 1
# Threads reading cases; more than the cores would only contend for them.
MAX_THREADS = 4
# Cases of the synthetic dataset a trial uses when no folder is given (make_batches' default).
SYNTHETIC_CASES = 2


@dataclass(frozen=True)
class DataCheck:
    """What a check of a data folder found (all of it good, or it raised).

    Attributes:
        folder: The folder checked.
        cases: Case folders in it.
        read: Cases read now.
        cached: Cases unchanged since an earlier check, not read again.
        seconds: Wall time of the check.
    """

    folder: str
    cases: int
    read: int
    cached: int
    seconds: float


def check_dataset(data_dir: Path | None, *, with_labels: bool, cache_dir: Path | None = None) -> DataCheck:
    """Read and check every case of ``data_dir`` (the synthetic dataset when None), skipping unchanged ones.

    Args:
        data_dir: BraTS dataset root, or None for the synthetic dataset trials use (generated if needed).
        with_labels: Whether segmentations are needed (training) and must be checked too.
        cache_dir: Cache folder; :func:`workloads.unet3d.data.default_cache_dir` if None.

    Raises:
        DataError: The first bad case in sorted order; the message names the file.
    """
    start = time.perf_counter()
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    if data_dir is None:
        data_dir = ensure_synthetic_brats(cache, n_cases=SYNTHETIC_CASES, shape=BRATS_SHAPE)
    folder = Path(data_dir).resolve()
    cases = find_cases(folder)
    record_path = cache / CHECK_CACHE_DIR / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}.json"
    known = _load(record_path)
    keys = {str(case): _key(case) for case in cases}
    todo = [case for case in cases if not _still_good(known.get(str(case)), keys[str(case)], with_labels)]
    problems: dict[Path, DataError] = {}
    if todo:
        with ThreadPoolExecutor(max_workers=min(MAX_THREADS, os.cpu_count() or 1, len(todo))) as pool:
            for case, problem in zip(todo, pool.map(lambda c: _check_case(c, with_labels), todo), strict=True):
                if problem is not None:
                    problems[case] = problem
    good = {str(case): {"files": keys[str(case)], "with_labels": with_labels}
            for case in todo if case not in problems}
    if good:
        _save(record_path, {**known, **good})
    if problems:
        raise problems[min(problems)]
    return DataCheck(folder=str(folder), cases=len(cases), read=len(todo), cached=len(cases) - len(todo),
                     seconds=time.perf_counter() - start)


def _check_case(case: Path, with_labels: bool) -> DataError | None:
    try:
        read_case(case, with_labels=with_labels)
    except DataError as exc:
        return exc
    return None


def _key(case: Path) -> list[list[object]]:
    """Name, size and modification time of every volume file of the case (the segmentation's too)."""
    entries = []
    names = sorted(p.name for p in case.iterdir() if p.is_file())
    wanted = (*MODALITIES, "seg")
    for name in names:
        if any(name.endswith(f"_{key}{suffix}") for key in wanted for suffix in (".nii.gz", ".nii")):
            stat = (case / name).stat()
            entries.append([name, stat.st_size, stat.st_mtime_ns])
    return entries


def _still_good(entry: object, key: list[list[object]], with_labels: bool) -> bool:
    if not isinstance(entry, dict) or entry.get("files") != key:
        return False
    return bool(entry.get("with_labels")) or not with_labels


def _load(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("schema") != CHECK_CACHE_SCHEMA:
        return {}
    cases = data.get("cases")
    return cases if isinstance(cases, dict) else {}


def _save(path: Path, cases: dict[str, object]) -> None:
    """Write the record atomically; a cache that cannot be written only costs a re-read next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({"schema": CHECK_CACHE_SCHEMA, "cases": cases}, sort_keys=True))
        os.replace(partial, path)
    except OSError:
        pass
