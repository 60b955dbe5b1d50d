"""Guard: on every recorded landscape, autotune's default sampler is no worse than random sampling.

The landscapes are real grids (``benchmarks/landscapes/``, recorded by ``benchmarks/record_landscape.py``);
the replay (:mod:`autotune.replay`) pays what runs pay and prunes as ``autotune run`` prunes. Sampler
behaviour changes between Optuna major versions: pyproject.toml bounds Optuna to the versions this test
has seen.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest

from autotune.landscape import landscape_files, read_landscape
from autotune.replay import replay
from autotune.study.setup import search_sampler

LANDSCAPES = landscape_files(Path(__file__).resolve().parents[2] / "benchmarks" / "landscapes")
SEEDS = 8
# Multivariate grouped TPE is experimental in Optuna 5: its construction warns, as in ``autotune run``.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def median_trials(landscape, make, references: bool) -> float:
    """Median over seeds of the configurations measured until one reaching the best (noise target) was."""
    grid = len(landscape.configs)
    counts = []
    for seed in range(SEEDS):
        run = replay(landscape, make(seed), seed, references=references)
        counts.append(run.trials["noise"] if run.trials["noise"] is not None else grid)
    return statistics.median(counts)


def test_landscapes_are_recorded() -> None:
    assert len(LANDSCAPES) >= 2


@pytest.mark.parametrize("path", LANDSCAPES, ids=[p.stem for p in LANDSCAPES])
def test_the_default_sampler_is_no_worse_than_random_sampling(path: Path) -> None:
    landscape = read_landscape(path)
    default = median_trials(landscape, search_sampler, references=True)
    random_plain = median_trials(landscape, lambda s: optuna.samplers.RandomSampler(seed=s), references=False)
    random_refs = median_trials(landscape, lambda s: optuna.samplers.RandomSampler(seed=s), references=True)
    assert default <= min(random_plain, random_refs), (
        f"{landscape.describe()}: default needs a median of {default} trials, random sampling "
        f"{random_plain} (plain) and {random_refs} (after the references)")


@pytest.mark.parametrize("path", LANDSCAPES, ids=[p.stem for p in LANDSCAPES])
def test_each_landscape_measured_every_configuration_three_times(path: Path) -> None:
    landscape = read_landscape(path)
    counts = {cid: len(runs) for cid, runs in landscape.by_config().items()}
    assert min(counts.values()) >= 3, f"{landscape.name}: configurations with fewer than 3 repeats"
