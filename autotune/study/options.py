"""The options of one ``autotune run``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autotune.confirm import (
    DEFAULT_REPEATS,
    DEFAULT_SELECT_ROUNDS,
    DEFAULT_TOP,
)


@dataclass(frozen=True)
class RunOptions:
    """Options of one ``autotune run``.

    Attributes:
        trials: Trials to run in this call (references included, repeats answered from storage).
        timeout_s: Wall-clock budget; no trial starts after it.
        storage: Optuna storage URL; None means :data:`DEFAULT_STORAGE`.
        study_name: Study name; None derives it from workload, mode and host.
        sampler: ``tpe``, ``random`` or ``grid``.
        seed: Sampler seed.
        data_dir: Dataset folder passed to the workload, or None for synthetic data.
        report_dir: Output folder; None means ``reports/<study>``.
        trial_timeout_s: Wall-clock limit of one trial.
        memory_cap_mb: Memory cap of one trial; None means a share of the host's memory.
        allow_mixed_hosts: Accept a study recorded on a host with another fingerprint.
        prune: Whether search trials may be pruned.
        wait_for_cores: Wait while another autotune worker measures on this host; False stops the
            run instead (:class:`autotune.lock.CoresBusy`).
        confirm_top: Search candidates (finalists) re-measured in the confirmation stage.
        confirm_repeats: Estimation rounds of the confirmation stage (winner, vendor, baseline);
            0 skips the stage.
        confirm_select_rounds: Selection rounds of the finalists alone, which choose the winner.
        full_report: Write the full report (figures, HTML) rather than ``best.json`` and a short
            ``report.md``.
        profile: Profile the baseline and the best configuration at the end (op-time breakdown).
        max_latency_s: A configuration whose latency figure (the contract's ``latency``) exceeds this is
            infeasible: stored with its figures, never a winner. None: no bound.
        warm_start: An earlier study in the same storage to start from (:mod:`autotune.study.warm`).
    """

    trials: int = 30
    timeout_s: float = 1080.0
    storage: str | None = None
    study_name: str | None = None
    sampler: str = "tpe"
    seed: int = 0
    data_dir: str | None = None
    report_dir: Path | None = None
    trial_timeout_s: float = 600.0
    memory_cap_mb: float | None = None
    allow_mixed_hosts: bool = False
    prune: bool = True
    wait_for_cores: bool = True
    confirm_top: int = DEFAULT_TOP
    confirm_repeats: int = DEFAULT_REPEATS
    confirm_select_rounds: int = DEFAULT_SELECT_ROUNDS
    full_report: bool = False
    profile: bool = False
    max_latency_s: float | None = None
    warm_start: str | None = None
