"""TrialRunner against the fake workload, run as a real subprocess."""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import threading
import time
import uuid

import psutil
import pytest

from autotune.launch import trial_spec
from autotune.protocol import Outcome, TrialConfig
from autotune.record import FIGURES, trial_record
from autotune.runner import TrialRunner, TrialSpec

TIMEOUT_S = 10.0
# Trials that never finish on their own (hang, spawn) run into this shorter limit.
HANG_TIMEOUT_S = 2.0
MEMORY_CAP_MB = 300.0
MARKER_ENV = "AUTOTUNE_TEST_MARKER"
MID_STEP_FAULTS = ("crash", "segfault", "exit", "hang", "garbage", "memory")


@pytest.fixture
def make_spec(fake_space, host):
    """A runner spec for the fake space's defaults with ``values`` applied, as a study builds it."""

    def make(timeout_s: float = TIMEOUT_S, **values) -> TrialSpec:
        config = fake_space.configure(values)
        return trial_spec(
            fake_space, config, host, timeout_s=timeout_s, memory_cap_mb=MEMORY_CAP_MB
        )

    return make


def fake_spec(**overrides) -> TrialSpec:
    """A spec built directly, without a search space."""
    params = {"steps": 3, "warmup": 1, "step_seconds": 0.005, **overrides.pop("params", {})}
    fields = {"timeout_s": TIMEOUT_S, "memory_cap_mb": MEMORY_CAP_MB, **overrides}
    return TrialSpec(
        module="workloads.fake", config=TrialConfig(workload="fake", params=params), **fields
    )


def test_ok_trial_reports_consistent_figures(make_spec):
    spec = make_spec(batch=2, steps=5, warmup=2, step_seconds=0.005)

    outcome = TrialRunner().run(spec)

    assert outcome.outcome is Outcome.OK, outcome.reason
    assert outcome.reason == ""
    assert outcome.returncode == 0
    result = outcome.result
    assert result is not None
    assert result.workload == "fake"
    assert result.params["batch"] == 2
    assert len(result.step_seconds) == 5
    assert len(result.warmup_seconds) == 2
    assert outcome.step_seconds == tuple(result.step_seconds)
    assert outcome.warmup_seconds == tuple(result.warmup_seconds)
    median = statistics.median(result.step_seconds)
    assert result.median_step_s == pytest.approx(median)
    # channels_first without transpose elimination costs 4x, batch 2 another 2x.
    assert median >= 0.005 * 8
    assert result.work_per_step == 2 * 16**3
    figures = result.figures
    assert figures["voxels_per_s"] == pytest.approx(2 * 16**3 / median)
    assert figures["samples_per_s"] == pytest.approx(2 / median)
    assert figures["latency_per_sample_s"] == pytest.approx(median / 2)
    assert figures["gflops_per_s"] == pytest.approx(figures["flops_per_step"] / median / 1e9)
    assert outcome.planned_steps == 5
    assert result.mad_step_s >= 0 and result.cv >= 0
    assert result.peak_rss_mb > 0
    assert result.effective["layout"] == "channels_first"
    assert outcome.wall_seconds >= sum(result.step_seconds)


@pytest.mark.parametrize(("onednn", "expected"), [(True, "1"), (False, "0")])
def test_environment_knob_reaches_the_child(make_spec, onednn, expected):
    outcome = TrialRunner().run(make_spec(onednn=onednn, step_seconds=0.001))

    assert outcome.outcome is Outcome.OK, outcome.reason
    assert outcome.result.effective["env"]["TF_ENABLE_ONEDNN_OPTS"] == expected


def test_none_in_env_removes_the_variable(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("KMP_BLOCKTIME", "7")

    outcome = TrialRunner().run(fake_spec(env={"OMP_NUM_THREADS": None, "KMP_BLOCKTIME": "1"}))

    assert outcome.outcome is Outcome.OK, outcome.reason
    env = outcome.result.effective["env"]
    assert env["OMP_NUM_THREADS"] is None
    assert env["KMP_BLOCKTIME"] == "1"


def test_space_default_unsets_a_variable_of_the_driver(make_spec, monkeypatch):
    monkeypatch.setenv("KMP_BLOCKTIME", "7")

    outcome = TrialRunner().run(make_spec(kmp_blocktime="default", step_seconds=0.001))

    assert outcome.outcome is Outcome.OK, outcome.reason
    assert outcome.result.effective["env"]["KMP_BLOCKTIME"] is None


def test_cpu_affinity_is_applied():
    outcome = TrialRunner().run(fake_spec(cpus=(0,)))

    assert outcome.outcome is Outcome.OK, outcome.reason
    assert outcome.result.effective["cpu_affinity"] == [0]


def test_no_cpus_leaves_affinity_alone():
    outcome = TrialRunner().run(fake_spec(cpus=None))

    assert outcome.outcome is Outcome.OK, outcome.reason
    assert outcome.result.effective["cpu_affinity"] == sorted(os.sched_getaffinity(0))


def test_socket_affinity_pins_to_a_socket_this_process_may_use(fake_space, host):
    cpu = min(host.usable_cpus)
    # A cpuset that holds only a CPU of socket 1: socket 0 has nothing usable.
    confined = dataclasses.replace(
        host, sockets=2, core_of_cpu={cpu: (1, 0), cpu + 1000: (0, 0)}, usable_cpus=(cpu,)
    )
    config = fake_space.reference("vendor_recommended", {"step_seconds": 0.001})
    assert config["affinity"] == "socket"

    spec = trial_spec(fake_space, config, confined, timeout_s=TIMEOUT_S)
    outcome = TrialRunner().run(spec)

    assert spec.cpus == (cpu,)
    assert outcome.outcome is Outcome.OK, outcome.reason
    assert outcome.result.effective["cpu_affinity"] == [cpu]


@pytest.mark.parametrize(
    ("fault", "expected", "fragments"),
    [
        ("crash", Outcome.CRASHED, ("exit status 1", "RuntimeError", "crashed as told")),
        ("segfault", Outcome.CRASHED, ("SIGSEGV", "segmentation fault")),
        ("exit", Outcome.CRASHED, ("exit status 3",)),
        ("hang", Outcome.TIMED_OUT, ("timeout of 2s",)),
        ("garbage", Outcome.BAD_OUTPUT, ("unreadable protocol line", "not valid JSON")),
        ("no_result", Outcome.BAD_OUTPUT, ("exited without a result",)),
        ("half_result", Outcome.BAD_OUTPUT, ("unreadable protocol line",)),
        ("memory", Outcome.OUT_OF_MEMORY, ("exceeded the cap of 300 MiB",)),
        ("bad_input", Outcome.BAD_INPUT, ("the fake workload was told its input is bad",)),
    ],
)
def test_every_fault_becomes_its_outcome(make_spec, fault, expected, fragments):
    spec = make_spec(timeout_s=HANG_TIMEOUT_S if fault == "hang" else TIMEOUT_S,
                     fault=fault, fault_mb=1024, step_seconds=0.001)

    start = time.monotonic()
    outcome = TrialRunner().run(spec)

    assert outcome.outcome is expected, outcome.reason
    assert outcome.result is None
    for fragment in fragments:
        assert fragment in outcome.reason
    assert time.monotonic() - start < TIMEOUT_S
    if fault in MID_STEP_FAULTS:
        # The fault fires at step index 1: after the single warm-up step, before any timed step.
        assert outcome.warmup_seconds and not outcome.step_seconds


def test_memory_fault_reports_the_peak(make_spec):
    outcome = TrialRunner().run(make_spec(fault="memory", fault_mb=1024))

    assert outcome.outcome is Outcome.OUT_OF_MEMORY
    assert outcome.peak_rss_mb > MEMORY_CAP_MB


def test_segfault_keeps_the_signal_as_returncode(make_spec):
    outcome = TrialRunner().run(make_spec(fault="segfault"))

    assert outcome.returncode == -11


def test_crash_keeps_the_stderr_tail(make_spec):
    outcome = TrialRunner().run(make_spec(fault="crash"))

    assert outcome.outcome is Outcome.CRASHED
    assert "Traceback" in outcome.stderr_tail
    assert "RuntimeError: the fake workload crashed as told" in outcome.stderr_tail


def _marked_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.pid != os.getpid()
                and proc.environ().get(MARKER_ENV) == marker
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_timeout_kills_the_whole_process_group():
    marker = uuid.uuid4().hex
    spec = fake_spec(env={MARKER_ENV: marker}, timeout_s=HANG_TIMEOUT_S,
                     params={"fault": "spawn"})
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for proc in _marked_processes(marker):
                try:
                    cmdline = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if "time.sleep(3600)" in cmdline:
                    seen.append(cmdline)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        outcome = TrialRunner().run(spec)
    finally:
        done.set()
        watcher.join(timeout=5)

    assert outcome.outcome is Outcome.TIMED_OUT
    assert seen, "the fake never started its grandchild"
    deadline = time.monotonic() + 2
    while _marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _marked_processes(marker) == []


def test_on_step_sees_growing_steps_and_the_setup():
    calls: list[tuple[list[float], dict]] = []

    def on_step(steps, setup):
        calls.append((list(steps), dict(setup)))
        return False

    outcome = TrialRunner().run(fake_spec(params={"steps": 4, "batch": 2}), on_step=on_step)

    assert outcome.outcome is Outcome.OK, outcome.reason
    assert [len(steps) for steps, _ in calls] == [1, 2, 3, 4]
    for (shorter, _), (longer, _) in itertools.pairwise(calls):
        assert longer[: len(shorter)] == shorter
    assert calls[-1][0] == list(outcome.step_seconds)
    setup = calls[0][1]
    assert setup["kind"] == "setup"
    assert setup["work_per_step"] == 2 * 16**3
    assert setup["steps"] == 4


def test_on_step_returning_true_prunes():
    spec = fake_spec(params={"steps": 40, "step_seconds": 0.05})

    start = time.monotonic()
    outcome = TrialRunner().run(spec, on_step=lambda steps, setup: len(steps) >= 2)

    assert outcome.outcome is Outcome.PRUNED
    assert "pruned after 2 timed steps" in outcome.reason  # the callback prunes on its second call
    assert len(outcome.step_seconds) == 2
    assert all(t > 0 for t in outcome.step_seconds)
    assert outcome.result is None
    assert time.monotonic() - start < 40 * 0.05


def test_config_for_another_workload_is_bad_input():
    spec = TrialSpec(module="workloads.fake", config=TrialConfig(workload="other", params={}),
                     timeout_s=TIMEOUT_S)

    outcome = TrialRunner().run(spec)

    assert outcome.outcome is Outcome.BAD_INPUT
    assert "'other'" in outcome.reason
    assert outcome.returncode == 2


def test_missing_module_is_a_crash_with_its_reason():
    spec = TrialSpec(module="workloads.no_such_workload",
                     config=TrialConfig(workload="fake", params={}), timeout_s=TIMEOUT_S)

    outcome = TrialRunner().run(spec)

    assert outcome.outcome is Outcome.CRASHED
    assert "No module named" in outcome.reason


def test_interpreter_that_cannot_start_is_a_crash():
    outcome = TrialRunner().run(fake_spec(python="/nonexistent/python3"))

    assert outcome.outcome is Outcome.CRASHED
    assert "could not start the trial" in outcome.reason


def test_record_of_a_failed_trial_keeps_reason_and_stderr(make_spec, fake_space, host):
    spec = make_spec(fault="crash")
    outcome = TrialRunner().run(spec)

    record = trial_record(fake_space.configure({"fault": "crash"}), spec, outcome, host)

    assert record["outcome"] == "crashed"
    assert "RuntimeError" in record["reason"]
    assert "RuntimeError" in record["stderr_tail"]
    assert record["host_fingerprint"] == host.fingerprint
    assert "voxels_per_s" not in record and record["figure_names"] == []
    assert set(FIGURES) <= set(record)


@pytest.mark.parametrize(("warmup", "planned"), [(1, 4), (0, 4)])
def test_the_plan_reaches_the_driver_before_a_trial_is_pruned(make_spec, warmup, planned):
    spec = make_spec(steps=50, warmup=warmup, trial_seconds=0.2, step_seconds=0.05)

    outcome = TrialRunner().run(spec, on_step=lambda steps, progress: True)

    assert outcome.outcome is Outcome.PRUNED and len(outcome.step_seconds) == 1
    assert planned - 1 <= outcome.planned_steps <= planned + 1  # about 0.2 s of 0.05 s steps, not the 50 allowed


@pytest.mark.parametrize(
    ("messages", "running"),
    [
        ([("setup", {"warmup": 1, "steps": 3})], False),  # warming up: no timed step runs
        ([("setup", {"warmup": 1, "steps": 3}), ("step", {"seconds": 1.0, "warmup": True})], True),
        ([("setup", {"warmup": 0, "steps": 3})], False),  # no step has shown it carries no figure
        ([("setup", {"warmup": 0, "steps": 3}), ("step", {"seconds": 1.0, "warmup": False})], True),
        ([("setup", {"warmup": 1, "steps": 3}), ("step", {"seconds": 1.0, "warmup": True, "figure": 5.0})],
         False),  # the steps carry their own figure: their time bounds nothing
        ([("setup", {"warmup": 0, "steps": 1}), ("step", {"seconds": 1.0, "warmup": False})], False),  # done
        ([("setup", {"warmup": 1, "steps": 3}), ("step", {"seconds": 1.0, "warmup": True}), ("ready", {})],
         False),  # one of several instances, waiting for the go
    ],
)
def test_a_timed_step_is_running_only_between_what_the_protocol_says(tmp_path, messages, running):
    from autotune.protocol import TrialConfig, encode_message
    from autotune.runner import TrialSpec, _Execution

    execution = _Execution(TrialSpec("workloads.fake", TrialConfig("fake", {})), tmp_path, None)
    for kind, payload in messages:
        assert execution._handle(encode_message(kind, **payload)) is None
    assert execution.running_step() is None  # under a second: within the slack for the message's way
    found = execution.running_step(time.monotonic() + 2.5)  # as if looked at 2.5 s later
    assert (found is not None) is running
    if running:
        assert 1.4 < found <= 1.6
