"""The workload's check before a study: the fake workload's check mode, run as a real subprocess."""

from __future__ import annotations

import dataclasses

import pytest

from autotune.errors import UserError
from autotune.launch import trial_spec
from autotune.preflight import check_inputs, reference_configs
from autotune.protocol import Outcome
from autotune.runner import TrialRunner


def test_check_mode_measures_nothing_and_answers(fake_space, host):
    spec = trial_spec(fake_space, fake_space.configure({"step_seconds": 5.0}), host, timeout_s=10)

    outcome = TrialRunner().run(dataclasses.replace(spec, check=True))

    assert outcome.outcome is Outcome.OK, outcome.reason
    assert outcome.checked == {} and outcome.result is None
    assert outcome.step_seconds == () and outcome.warmup_seconds == ()
    assert outcome.wall_seconds < 5.0  # a 5 s step was never run


def test_the_check_refuses_a_pinned_value_with_the_workloads_own_words(fake_space, host):
    configs = reference_configs(fake_space, {"fault": "bad_input"})

    with pytest.raises(UserError, match=r"^the fake workload was told its input is bad$"):
        check_inputs(fake_space, configs, host, timeout_s=10)


def test_the_check_runs_once_on_the_baseline_with_the_pins(fake_space):
    configs = reference_configs(fake_space, {"batch": 2})

    assert configs == [fake_space.reference("baseline", {"batch": 2})]


def test_a_check_that_cannot_run_is_a_user_error(fake_space, host):
    spec_module = dataclasses.replace(fake_space, module="workloads.nosuchmodule")

    with pytest.raises(UserError, match=r"could not check its input \(crashed: exit status 1"):
        check_inputs(spec_module, reference_configs(fake_space, {}), host, timeout_s=10)


def test_good_input_passes(fake_space, host):
    found = check_inputs(fake_space, reference_configs(fake_space, {}), host, timeout_s=10)

    assert found and all(f == {} for f in found)
