"""Trials of several instances: the fake workload run as real subprocesses, two instances of one core."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path

import psutil
import pytest

from autotune.instances import common_window, work_in
from autotune.launch import trial_spec
from autotune.protocol import Outcome
from autotune.record import trial_record
from autotune.runner import TrialRunner
from autotune.space import HostFacts, load_space

DATA = Path(__file__).resolve().parents[1] / "data"
INSTANCE_KNOBS = """
[workload.figures]
samples_per_s = "samples/s"
latency_per_sample_s = "s"

""" + (DATA / "fake_instances.toml").read_text()

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")


@pytest.fixture(scope="module")
def space(tmp_path_factory, host):
    path = tmp_path_factory.mktemp("space") / "fake_instances.toml"
    path.write_text((DATA / "fake.toml").read_text() + INSTANCE_KNOBS)
    return load_space(path, HostFacts.of(host))


def spec_of(space, host, timeout_s: float = 20.0, extra: dict | None = None, **values):
    spec = trial_spec(space, space.configure({"instances": 2, "cores_per_instance": 1, **values}), host,
                      timeout_s=timeout_s, memory_cap_mb=600.0)
    if extra:
        spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, params={**spec.config.params,
                                                                                          **extra}))
    return spec


def test_two_instances_measure_together_on_their_own_cores(space, host):
    single = TrialRunner().run(trial_spec(space, space.configure({"affinity": "cores", "pin_cores": 1,
                                                                   "steps": 6, "step_seconds": 0.05}), host))
    outcome = TrialRunner().run(spec_of(space, host, steps=6, step_seconds=0.05))

    assert outcome.outcome is Outcome.OK, outcome.reason
    assert [entry["cpu_affinity"] for entry in outcome.instances] == [[0], [1]]
    result = outcome.result
    assert result.effective["instances"] == 2 and result.effective["window_s"] > 0
    assert result.work_per_step == 2 * single.result.work_per_step
    # two sleeping instances do twice the work of one in the same time
    ratio = result.figures["voxels_per_s"] / single.result.figures["voxels_per_s"]
    assert 1.6 < ratio < 2.2
    assert result.figures["samples_per_s"] == pytest.approx(2 * single.result.figures["samples_per_s"], rel=0.2)
    per = [entry["voxels_per_s"] for entry in outcome.instances]
    assert result.figures["voxels_per_s"] == pytest.approx(sum(per), rel=0.15)
    assert result.figures["latency_per_sample_s"] == max(e["latency_per_sample_s"] for e in outcome.instances)
    record = trial_record(space.configure({"instances": 2}), spec_of(space, host), outcome, host)
    assert record["instances"]["cpus"] == [[0], [1]] and record["cpus"] is None
    assert len(record["instance_figures"]) == 2


def test_the_barrier_starts_the_timed_steps_together(space, host):
    # instance 1 warms up for 1 s longer; without the barrier its steps would start after the others ended
    outcome = TrialRunner().run(spec_of(space, host, steps=3, warmup=1, step_seconds=0.1,
                                        extra={"fault": "none", "warmup_extra_instance": 1}))
    assert outcome.outcome is Outcome.OK, outcome.reason
    assert outcome.result.effective["window_s"] > 0.2


def test_one_failing_instance_fails_the_trial_with_its_reason(space, host):
    outcome = TrialRunner().run(spec_of(space, host, fault="crash", extra={"fault_instance": 1}))
    assert outcome.outcome is Outcome.CRASHED
    assert outcome.reason.startswith("instance 2 of 2: exit status 1")
    assert "crashed as told" in outcome.stderr_tail


def test_timeout_is_for_all_and_kills_every_instance(space, host):
    marker = uuid.uuid4().hex
    spec = spec_of(space, host, timeout_s=3.0, fault="hang", extra={"fault_instance": 0})
    spec = dataclasses.replace(spec, env={**spec.env, "AUTOTUNE_TEST_MARKER": marker})
    outcome = TrialRunner().run(spec)
    assert outcome.outcome is Outcome.TIMED_OUT
    assert "all 2 instances" in outcome.reason
    time.sleep(0.2)
    left = [p for p in psutil.process_iter(["environ"])
            if (p.info["environ"] or {}).get("AUTOTUNE_TEST_MARKER") == marker]
    assert left == []


def test_the_pruner_sees_the_aggregate_of_every_instance(space, host):
    seen = []

    def on_step(steps, setup):
        seen.append((list(steps), setup["work_per_step"]))
        return len(steps) == 2

    outcome = TrialRunner().run(spec_of(space, host, steps=6, step_seconds=0.02), on_step=on_step)
    assert outcome.outcome is Outcome.PRUNED
    assert "of every instance" in outcome.reason
    assert [len(s) for s, _ in seen] == [1, 2]
    assert seen[0][1] == 2 * 16**3  # the work of both instances


def test_a_round_is_stopped_while_it_runs_on_its_slowest_instance(space, host):
    seen = []

    def on_running(steps, setup):
        seen.append((list(steps), setup["work_per_step"]))
        return steps[-1] > 0.3  # 1.3 s into the first round (1 s of slack)

    outcome = TrialRunner().run(spec_of(space, host, steps=3, step_seconds=2.0), on_running=on_running)
    assert outcome.outcome is Outcome.PRUNED
    assert "into timed step 1" in outcome.reason and "slowest of the instances" in outcome.reason
    assert outcome.step_seconds == () and 0.3 < outcome.running_seconds < 0.3 + 0.25
    assert seen and all(len(steps) == 1 for steps, _ in seen)
    assert seen[0][1] == 2 * 16**3  # the work of both instances
    assert outcome.wall_seconds < 10


def test_memory_cap_is_for_all_instances_together(space, host):
    spec = spec_of(space, host, fault="memory", fault_mb=256)
    outcome = TrialRunner().run(dataclasses.replace(spec, memory_cap_mb=400.0))
    assert outcome.outcome is Outcome.OUT_OF_MEMORY
    assert "of the 2 instances" in outcome.reason


def test_window_arithmetic():
    assert common_window([[(0.0, 1.0), (1.0, 2.0)], [(0.5, 1.5), (1.5, 2.5)]]) == (0.5, 2.0)
    assert common_window([[(0.0, 1.0)], [(2.0, 3.0)]]) is None
    assert work_in([(0.0, 1.0), (1.0, 2.0)], 10.0, (0.5, 2.0)) == pytest.approx(15.0)
