"""The check before a study: does the workload accept the pinned values and its inputs?

Some bad input only the workload can judge: a patch the network cannot take at its depth, a data folder
holding a corrupt file. Left to the trials, it would be stored as a failed baseline, leave the vendor
trial waiting, and end the run with an empty table. :func:`check_inputs` instead starts the workload once
on the baseline configuration (pins applied) in its check mode (``--check``, see :mod:`autotune.protocol`): the child
validates the values and reads its inputs, measures nothing, and answers. Bad input then stops the
command with the workload's own one-line message before a study is opened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from autotune.errors import UserError
from autotune.host import HostInfo
from autotune.launch import trial_spec
from autotune.protocol import Outcome
from autotune.runner import TrialOutcome, TrialRunner, TrialSpec
from autotune.space import REFERENCES, SearchSpace

# The check reads a whole data folder on its first run (about 1,400 compressed volumes for BraTS 2017),
# which can take minutes where a trial's timeout is set tight, so it has a limit of its own.
CHECK_TIMEOUT_S = 1800.0
# Training the check weights takes minutes on 2 cores (once per recipe and host); a slower host gets room.
PREPARE_TIMEOUT_S = 3600.0


def reference_configs(space: SearchSpace, pins: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the check runs on: the baseline with the pins applied.

    The pins and the inputs are the same in every configuration of the study, so one check covers them;
    the references differ only in values the space file sets, and a reference the workload refuses is
    recorded as a failed trial like any other. One check process, not two, matters for workloads that
    import TensorFlow to look at their input (a Keras model file).
    """
    return [space.reference(REFERENCES[0], pins)]


def check_inputs(
    space: SearchSpace,
    configs: Sequence[Mapping[str, Any]],
    host: HostInfo,
    *,
    data_dir: str | None = None,
    timeout_s: float = CHECK_TIMEOUT_S,
    memory_cap_mb: float | None = None,
    runner: TrialRunner | None = None,
) -> list[Mapping[str, Any]]:
    """Run the workload's check mode on each configuration; return what each check reported.

    The check runs without the configuration's environment and pinning: it measures nothing, and the
    launch itself is validated here (an allocator or CPUs the host lacks raise the usual UserError).

    Raises:
        UserError: The workload rejected a value or an input (its own message), or its check could not
            run (crashed, timed out): nothing has been stored.
    """
    runner = runner or TrialRunner()
    found = []
    for config in configs:
        spec = trial_spec(space, config, host, data_dir=data_dir, timeout_s=timeout_s, memory_cap_mb=memory_cap_mb)
        outcome = _answer(runner, dataclasses.replace(spec, env={}, cpus=None, check=True),
                          f"the {space.workload} workload could not check its input")
        found.append(outcome.checked or {})
    return found


def _answer(runner: TrialRunner, spec: TrialSpec, failed: str) -> TrialOutcome:
    """Run a check or prepare child; its bad input is the user's error as it said it, anything else ``failed``."""
    outcome = runner.run(spec)
    if outcome.outcome is Outcome.BAD_INPUT:
        raise UserError(outcome.reason)
    if outcome.outcome is not Outcome.OK:
        raise UserError(f"{failed} ({outcome.outcome.value}: {outcome.reason})")
    return outcome


def prepare_checks(
    space: SearchSpace,
    config: Mapping[str, Any],
    host: HostInfo,
    *,
    data_dir: str | None = None,
    timeout_s: float = PREPARE_TIMEOUT_S,
    memory_cap_mb: float | None = None,
    runner: TrialRunner | None = None,
) -> Mapping[str, Any]:
    """Make what the output-agreement checks need (check weights, trained once and cached) before a study.

    Runs the workload's prepare mode (``--prepare``) once, on ``config`` (the baseline with the pins), with
    the host's whole cores. A workload without an agreement reference prepares nothing.

    Returns:
        What the workload made (its ``prepared`` message): e.g. the weights used and seconds spent.

    Raises:
        UserError: The workload rejected its check input (a weights file that does not fit the model),
            or could not prepare it.
    """
    if space.agreement is None or space.agreement.reference is None:
        return {}
    runner = runner or TrialRunner()
    spec = trial_spec(space, config, host, data_dir=data_dir, timeout_s=timeout_s, memory_cap_mb=memory_cap_mb)
    outcome = _answer(runner, dataclasses.replace(spec, env={}, cpus=None, prepare=True),
                      f"the {space.workload} workload could not prepare its output checks")
    return {**(outcome.checked or {}), "wall_seconds": round(outcome.wall_seconds, 2)}
