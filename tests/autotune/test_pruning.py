"""BestFractionPruner: its decisions on an in-memory study, and pruning inside a fake study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotune.pruning import BestFractionPruner
from autotune.study import RunOptions, run_study

# The TPE sampler's ``group`` option is experimental in Optuna; that is not under test.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

STUDY = "fake-prune"
COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED

FIXED_KNOBS = (Path(__file__).resolve().parents[1] / "data" / "fake_fixed.toml").read_text()


def fake_space_text(searched: str, *, steps: int, step_seconds: float, baseline: str = "", vendor: str = "") -> str:
    """The fixed fake knobs, ``searched`` knob tables, the step count and length pinned, and the references."""
    return FIXED_KNOBS + searched + f"""
[knobs.steps]
type = "int"
low = 1
high = 100
default = {steps}
target = "param"
search = false

[knobs.step_seconds]
type = "float"
low = 0.0
high = 1.0
default = {step_seconds}
target = "param"
search = false

[baseline]
data_format = "channels_first"
onednn = false
{baseline}

[vendor_recommended]
kmp_blocktime = "1"
{vendor}
"""


# The vendor reference is 20x slower per step: far below half the baseline's throughput, so it
# would be pruned if the driver ever asked for references.
SLOWDOWN_SPACE = fake_space_text("""
[knobs.slowdown]
type = "categorical"
choices = [1.0, 20.0]
default = 1.0
target = "param"
""", steps=8, step_seconds=0.005, baseline="slowdown = 1.0", vendor="slowdown = 20.0")


def in_memory_study(
    completed: list[float], pruner: BestFractionPruner | None = None, direction: str = "maximize"
) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, pruner=pruner or BestFractionPruner())
    for value in completed:
        study.add_trial(optuna.trial.create_trial(value=value))
    return study


def running_trial(study: optuna.Study, reports: list[float]) -> optuna.Trial:
    trial = study.ask()
    for step, value in enumerate(reports):
        trial.report(value, step)
    return trial


@pytest.mark.parametrize(
    ("completed", "reports", "pruned"),
    [
        ([], [1.0, 1.0, 1.0], False),  # nothing to compare with
        ([100.0], [1.0], True),  # one timed step is enough to see a factor of two
        ([100.0], [], False),
        ([100.0], [10.0, 10.0], True),  # far below half the best
        ([100.0], [49.9, 49.9], True),
        ([100.0], [50.0, 50.0], False),  # exactly half is kept
        ([100.0], [90.0, 120.0], False),
        ([100.0], [90.0, 10.0], True),  # the latest value counts
        ([100.0], [10.0, 90.0], False),
        ([10.0, 100.0, 30.0], [40.0, 40.0], True),  # against the best, not the last or the mean
        ([10.0, 30.0], [40.0, 40.0], False),
    ],
)
def test_decisions(completed, reports, pruned):
    study = in_memory_study(completed)

    assert running_trial(study, reports).should_prune() is pruned


@pytest.mark.parametrize(
    ("completed", "reports", "pruned"),
    [
        ([0.1], [0.21], True),  # a latency over twice the best
        ([0.1], [0.2], False),  # exactly twice is kept
        ([0.3, 0.1], [0.15], False),  # against the lowest, the best when minimizing
        ([0.1], [0.05], False),
    ],
)
def test_decisions_when_the_objective_is_minimized(completed, reports, pruned):
    study = in_memory_study(completed, direction="minimize")

    assert running_trial(study, reports).should_prune() is pruned


def test_failed_and_pruned_trials_do_not_set_the_bar():
    study = in_memory_study([10.0])
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    study.add_trial(optuna.trial.create_trial(
        state=PRUNED, intermediate_values={0: 1000.0, 1: 1000.0}
    ))

    assert running_trial(study, [8.0, 8.0]).should_prune() is False


@pytest.mark.parametrize(
    ("fraction", "warmup", "reports", "pruned"),
    [
        (0.9, 2, [85.0, 85.0], True),
        (0.9, 2, [95.0, 95.0], False),
        (0.5, 0, [], False),  # no value reported yet: nothing to judge
        (0.5, 0, [10.0], True),
        (0.5, 4, [10.0, 10.0, 10.0], False),
        (0.5, 4, [10.0, 10.0, 10.0, 10.0], True),
        (1.0, 1, [99.0], True),
    ],
)
def test_fraction_and_warmup_are_honoured(fraction, warmup, reports, pruned):
    study = in_memory_study([100.0], BestFractionPruner(fraction=fraction, n_warmup_steps=warmup))

    assert running_trial(study, reports).should_prune() is pruned


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction"):
        BestFractionPruner(fraction=fraction)


def options(tmp_path: Path, **changes) -> RunOptions:
    values = {
        "trials": 2,
        "timeout_s": 120.0,
        "storage": f"sqlite:///{tmp_path / 'study.db'}",
        "study_name": STUDY,
        "report_dir": tmp_path / "report",
        "trial_timeout_s": 10.0,
        "confirm_repeats": 0,
        "memory_cap_mb": 300.0,
        **changes,
    }
    return RunOptions(**values)


@pytest.mark.parametrize("prune", [True, False])
def test_slow_search_trial_is_pruned_and_references_never(tmp_path, host, space_from_toml, prune):
    space = space_from_toml(SLOWDOWN_SPACE)
    assert run_study(options(tmp_path, prune=prune), host, space, {}) == 0
    study = optuna.load_study(study_name=STUDY, storage=options(tmp_path).storage)
    study.enqueue_trial({"slowdown": 20.0})
    study.enqueue_trial({"slowdown": 1.0})

    assert run_study(options(tmp_path, prune=prune), host, space, {}) == 0

    trials = sorted(study.get_trials(), key=lambda t: t.number)
    baseline, vendor, slow, fast = trials
    for reference in (baseline, vendor):
        assert reference.state == COMPLETE
        assert len(reference.user_attrs["step_seconds"]) == 8
    assert vendor.value < 0.5 * baseline.value  # slow enough to be pruned, had it been a search
    assert slow.params == {"slowdown": 20.0}
    assert fast.state == COMPLETE
    if prune:
        assert slow.state == PRUNED
        assert slow.user_attrs["outcome"] == "pruned"
        assert slow.user_attrs["reason"] == "pruned after 1 timed step"
        assert len(slow.user_attrs["step_seconds"]) == 1
        assert slow.user_attrs["time_saved_s"] > 0
        assert len(slow.intermediate_values) == 1
    else:
        assert slow.state == COMPLETE
        assert len(slow.user_attrs["step_seconds"]) == 8
        assert slow.intermediate_values == {}


@pytest.mark.parametrize(
    ("waited", "voxels", "best", "pruned"),
    [
        (61.0, 1000.0, 1000.0, True),  # 61 s against a 1 s best step: past both limits
        (59.0, 1000.0, 1000.0, False),  # under the one-minute floor
        (200.0, 10_000.0, 1000.0, False),  # 30 best steps of this size take 300 s
        (301.0, 10_000.0, 1000.0, True),
        (1000.0, 1000.0, None, False),  # nothing completed yet: nothing to compare with
    ],
)
def test_warmup_guard(waited, voxels, best, pruned):
    from autotune.pruning import best_step_seconds, warmup_too_slow

    assert warmup_too_slow(waited, best_step_seconds(voxels, best, maximize=True)) is pruned


@pytest.mark.parametrize(("work", "best", "maximize", "step"), [(1000.0, 500.0, True, 2.0), (4.0, 0.5, False, 2.0),
                                                               (4.0, None, False, None)])
def test_best_step_follows_the_objective_direction(work, best, maximize, step):
    from autotune.pruning import best_step_seconds

    assert best_step_seconds(work, best, maximize) == step


def test_runner_prunes_a_trial_stuck_in_warmup(fake_space, host):
    from autotune.launch import trial_spec
    from autotune.protocol import Outcome
    from autotune.runner import TrialRunner

    config = fake_space.configure({"fault": "hang", "fault_after": 0}, base=fake_space.reference("baseline"))
    spec = trial_spec(fake_space, config, host, timeout_s=20)
    seen = []

    def on_wait(waited, setup):
        seen.append(setup.get("work_per_step"))
        return waited > 0.5

    outcome = TrialRunner().run(spec, on_wait=on_wait)
    assert outcome.outcome is Outcome.PRUNED
    assert "warm-up" in outcome.reason and outcome.wall_seconds < 10
    assert seen and seen[0] == 16**3


# A search trial 100x slower than the references, with steps long enough (about 3 s) for the driver to
# see the running step pass the bar (twice the vendor's 0.03 s step, after its 1 s of slack) well before
# it ends.
SLOW_STEP_SPACE = fake_space_text("""
[knobs.slowdown]
type = "categorical"
choices = [1.0, 100.0]
default = 1.0
target = "param"
""", steps=3, step_seconds=0.03, baseline="slowdown = 1.0", vendor="slowdown = 1.0")


def test_a_search_trial_is_stopped_while_its_first_step_runs(tmp_path, host, space_from_toml):
    space = space_from_toml(SLOW_STEP_SPACE)
    assert run_study(options(tmp_path), host, space, {}) == 0
    study = optuna.load_study(study_name=STUDY, storage=options(tmp_path).storage)
    study.enqueue_trial({"slowdown": 100.0})

    assert run_study(options(tmp_path, trials=1), host, space, {}) == 0

    slow = max(study.get_trials(), key=lambda t: t.number)
    assert slow.params == {"slowdown": 100.0} and slow.state == PRUNED
    assert slow.user_attrs["reason"].startswith("pruned ") and "into timed step 1" in slow.user_attrs["reason"]
    assert slow.user_attrs["step_seconds"] == []
    running = slow.user_attrs["running_step_s"]
    assert 0.0 < running < 1.0  # the bound: the time into the ~3 s step less 1 s of slack, past 0.06 s
    best = max(t.value for t in study.get_trials() if t.state == COMPLETE)
    # the reported figure is the bound the decision used: this much work in the time the step had run
    assert slow.intermediate_values[0] == pytest.approx(16**3 / running, rel=0.01)
    assert slow.intermediate_values[0] < 0.5 * best
    assert slow.user_attrs["time_saved_s"] > 0
    assert slow.user_attrs["wall_seconds"] < 10  # its warm-up (a 3 s step) and ~1.2 s, not 3 more steps


def test_runner_stops_a_step_only_while_it_runs(fake_space, host):
    import dataclasses

    from autotune.launch import trial_spec
    from autotune.protocol import Outcome
    from autotune.runner import TrialRunner

    config = fake_space.configure({}, base=fake_space.reference("baseline"))
    spec = trial_spec(fake_space, config, host, timeout_s=30)
    spec = dataclasses.replace(spec, config=dataclasses.replace(
        spec.config, params={**spec.config.params, "step_seconds": 1.6, "warmup": 1, "steps": 2}))
    seen: list[list[float]] = []

    def on_running(steps, setup):
        seen.append(list(steps))
        return len(steps) == 2 and steps[-1] > 0.3  # the second timed step, 1.3 s into it (1 s of slack)

    outcome = TrialRunner().run(spec, on_running=on_running)
    assert outcome.outcome is Outcome.PRUNED
    assert "into timed step 2" in outcome.reason
    assert len(outcome.step_seconds) == 1 and outcome.running_seconds is not None
    assert 0.3 < outcome.running_seconds < outcome.step_seconds[0]
    # never asked during set-up or warm-up: every call had the first step running or done
    assert seen and all(len(steps) in (1, 2) for steps in seen)
    assert all(steps[0] <= outcome.step_seconds[0] + 0.25 for steps in seen if len(steps) == 1)


# Every search trial takes 6 s or more (9 steps of 0.6 s: slowdown 120), the references a second or two.
SLOW_SEARCH_SPACE = fake_space_text("""
[knobs.noise]
type = "categorical"
choices = [0.0, 0.001]
default = 0.0
target = "param"

[knobs.slowdown]
type = "float"
low = 1.0
high = 200.0
default = 120.0
target = "param"
search = false
""", steps=8, step_seconds=0.005, baseline="slowdown = 1.0", vendor="slowdown = 1.0")


def test_no_search_trial_starts_that_would_run_into_the_confirmation_share(tmp_path, host, space_from_toml, capsys):
    space = space_from_toml(SLOW_SEARCH_SPACE)
    # 9.5 s: the first search trial ends before it, with less than another such trial left
    status = run_study(options(tmp_path, trials=10, timeout_s=9.5, prune=False), host, space, {})
    assert status == 0
    study = optuna.load_study(study_name=STUDY, storage=options(tmp_path).storage)
    search = [t for t in study.get_trials() if t.user_attrs.get("role") == "search"]
    assert len(search) == 1  # after it, the budget left is less than one more trial like it
    assert search[0].user_attrs["wall_seconds"] > 5.4
    assert "less than a typical search trial of this run" in capsys.readouterr().out
