"""Guard: on every recorded landscape, autotune's default sampler is no worse than random sampling or TPE,
by the noise-aware target and by 95% of the best.

The landscapes are real grids (``benchmarks/landscapes/``, recorded by ``benchmarks/record_landscape.py``);
the replay (:mod:`autotune.replay`) pays what runs pay and prunes as ``autotune run`` prunes. Sampler
behaviour changes between Optuna major versions: pyproject.toml bounds Optuna to the versions this test
has seen.
"""

from __future__ import annotations

import functools
import statistics
from pathlib import Path

import optuna
import pytest

from autotune.landscape import landscape_files, read_landscape
from autotune.replay import TARGETS, replay
from autotune.study.setup import search_sampler

LANDSCAPES = landscape_files(Path(__file__).resolve().parents[2] / "benchmarks" / "landscapes")
SEEDS = 8
# Multivariate grouped TPE is experimental in Optuna 5: its construction warns, as in ``autotune run``.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


# Every sampler after the baseline and vendor references, as `autotune run` measures them first whatever
# the sampler (the README's table also shows Optuna's samplers without them).
SAMPLERS = {
    "default": (search_sampler, True),
    "random": (lambda s: optuna.samplers.RandomSampler(seed=s), True),
    "tpe (Optuna's defaults)": (lambda s: optuna.samplers.TPESampler(seed=s), True),
}


@functools.cache
def trials_to_best(path: Path, sampler: str) -> dict[str, float]:
    """Per target kind, the median over seeds of the configurations measured until one reaching the best was
    (one replay per seed serves both kinds: it runs until both are reached)."""
    landscape = read_landscape(path)
    make, references = SAMPLERS[sampler]
    runs = [replay(landscape, make(seed), seed, references=references) for seed in range(SEEDS)]
    grid = len(landscape.configs)
    return {kind: statistics.median(r.trials[kind] if r.trials[kind] is not None else grid for r in runs)
            for kind in TARGETS}


def test_landscapes_are_recorded() -> None:
    assert len(LANDSCAPES) >= 2


@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("path", LANDSCAPES, ids=[p.stem for p in LANDSCAPES])
def test_the_default_sampler_is_no_worse_than_random_sampling_or_tpe(path: Path, kind: str) -> None:
    default = trials_to_best(path, "default")[kind]
    others = {name: trials_to_best(path, name)[kind] for name in SAMPLERS if name != "default"}
    assert default <= min(others.values()), (
        f"{path.stem}, {kind} target: the default needs a median of {default} trials; {others}")


@pytest.mark.parametrize("path", LANDSCAPES, ids=[p.stem for p in LANDSCAPES])
def test_each_landscape_measured_every_configuration_three_times(path: Path) -> None:
    landscape = read_landscape(path)
    counts = {cid: len(runs) for cid, runs in landscape.by_config().items()}
    assert min(counts.values()) >= 3, f"{landscape.name}: configurations with fewer than 3 repeats"
