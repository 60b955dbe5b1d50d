"""Library warnings are collected into one closing line; --debug leaves them on stderr."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import optuna

from autotune.library_notes import collected

FAKE = Path(__file__).resolve().parents[1] / "data" / "fake.toml"


def test_warnings_and_optuna_records_are_collected_once() -> None:
    with collected() as notes:
        for _ in range(2):
            logging.getLogger("optuna.visualization").warning("There are no complete trials.")
        warnings.warn("Some regimes for parameter `x` have less than 2 trials", UserWarning, stacklevel=1)

    assert notes.notes == ["optuna: There are no complete trials.",
                           "python: Some regimes for parameter `x` have less than 2 trials"]
    assert notes.summary().startswith("note: library warnings hidden (optuna: There are no complete trials.")
    assert notes.summary().endswith("and 1 more); autotune --debug shows them")


def test_the_loggers_are_given_back() -> None:
    logger = logging.getLogger("optuna")
    before = (list(logger.handlers), logger.propagate)
    with collected():
        pass
    assert (list(logger.handlers), logger.propagate) == before


def test_debug_collects_nothing() -> None:
    with collected(debug=True) as notes:
        optuna.logging.get_logger("optuna").warning("shown as Optuna prints it")
    assert notes.notes == [] and notes.summary() is None


def test_a_run_whose_every_trial_fails_keeps_stderr_for_what_matters(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "autotune", "run", "--workload", "fake", "--space", str(FAKE), "--storage",
         f"sqlite:///{tmp_path / 's.db'}", "--study", "s", "--trials", "2", "--confirm-repeats", "0",
         "--no-profile", "--set", "fault=crash", "--set", "fault_after=0", "--report-dir", str(tmp_path / "r")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )

    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "There are no complete trials" not in done.stderr
    assert "[W " not in done.stderr and "Warning" not in done.stderr, done.stderr
    assert (tmp_path / "r" / "report.html").is_file()
