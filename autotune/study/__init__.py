"""The tuning study: one Optuna study, ask -> run one subprocess trial -> tell, until the budget ends.

The package keeps one concern per module, as Optuna keeps its loop apart from its study object and its
storages:

* :mod:`~autotune.study.storage`: storage URLs, opening an existing study, passwords kept out of output;
* :mod:`~autotune.study.options`: :class:`RunOptions`, the options of one ``autotune run``;
* :mod:`~autotune.study.setup`: the study's name, sampler, host and pin checks, orphans, references;
* :mod:`~autotune.study.loop`: :class:`SearchLoop`, the ask -> measure -> tell loop;
* :mod:`~autotune.study.stages`: checks before the search, then calibration, confirmation, profiles;
* :mod:`~autotune.study.warm`: warm starts from an earlier study in the same storage;
* :mod:`~autotune.study.run`: :func:`run_study`, which owns the flow from set-up to report.
"""

from autotune.study.loop import MAX_CONSECUTIVE_REPEATS, SearchLoop
from autotune.study.options import RunOptions
from autotune.study.run import run_study, summary_of
from autotune.study.setup import (
    TPE_STARTUP_TRIALS,
    default_study_name,
    enqueue_references,
    make_sampler,
    name_metric,
    open_shared_study,
)
from autotune.study.storage import (
    DEFAULT_STORAGE,
    load_existing_study,
    password_of,
    redact,
    sqlite_file,
    storage_errors,
    storage_url,
)

__all__ = [
    "DEFAULT_STORAGE",
    "MAX_CONSECUTIVE_REPEATS",
    "TPE_STARTUP_TRIALS",
    "RunOptions",
    "SearchLoop",
    "default_study_name",
    "enqueue_references",
    "load_existing_study",
    "make_sampler",
    "name_metric",
    "open_shared_study",
    "password_of",
    "redact",
    "run_study",
    "sqlite_file",
    "storage_errors",
    "storage_url",
    "summary_of",
]
