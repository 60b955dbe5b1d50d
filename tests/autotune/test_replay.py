"""Landscape files and the cost-aware replay, on small hand-made landscapes."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autotune.landscape import Measurement, append_lines, read_landscape, write_header
from autotune.replay import bad_params, replay, top_params

KNOBS = [{"name": "k", "kind": "categorical", "choices": ["a", "b", "c", "d"], "when": {}}]


def make_landscape(path: Path, figures: dict[str, list[dict]], roles: dict[str, str] | None = None) -> Path:
    """A one-knob landscape: ``figures`` maps a value of k to its repeats (overrides of a default repeat)."""
    roles = roles or {"a": "baseline", "b": "vendor_recommended"}
    configs = [{"id": i, "params": {"k": v}, "roles": [roles[v]] if v in roles else [], "config": {"k": v}}
               for i, v in enumerate(KNOBS[0]["choices"])]
    write_header(path, {"host": {"cpu_model": "test", "logical_cpus": 2, "isa": {}}, "mode": "infer",
                        "objective": {"name": "voxels_per_s", "unit": "voxels/s", "direction": "maximize"},
                        "knobs": KNOBS, "configs": configs})
    lines = []
    for i, value in enumerate(KNOBS[0]["choices"]):
        for r, over in enumerate(figures[value]):
            fields = {"config": i, "repeat": r, "outcome": "ok", "step_seconds": (1.0,) * 4,
                      "warmup_seconds": (2.0,), "wall_seconds": 10.0, "setup_seconds": 3.0,
                      "work_per_step": 100.0, "value": 100.0, **over}
            lines.append(Measurement(**fields).to_line())
    append_lines(path, lines)
    return path


def steady(value: float, step: float, n: int = 4, repeats: int = 3) -> list[dict]:
    """Repeats of a configuration whose steps all take ``step`` seconds (value = 100 / step)."""
    return [{"value": value, "step_seconds": (step,) * n, "wall_seconds": 5.0 + step * n} for _ in range(repeats)]


def test_the_noise_target_widens_with_the_best_configurations_spread(tmp_path: Path) -> None:
    # Best d: median 100, CV 5% -> within 10%; c at 92 reaches the noise target but not 95%.
    path = make_landscape(tmp_path / "l.jsonl", {
        "a": steady(10, 10), "b": steady(50, 2), "c": steady(92, 100 / 92),
        "d": [{"value": v} for v in (95.0, 100.0, 105.0)],
    })
    landscape = read_landscape(path)
    assert landscape.tolerance() == pytest.approx(0.1, rel=0.01)
    assert landscape.targets("noise") == {2, 3}
    assert landscape.targets("fraction") == {3}


def test_a_quiet_landscape_keeps_the_three_percent_floor(tmp_path: Path) -> None:
    path = make_landscape(tmp_path / "l.jsonl", {
        "a": steady(10, 10), "b": steady(96, 100 / 96), "c": steady(98, 100 / 98), "d": steady(100, 1),
    })
    landscape = read_landscape(path)
    assert landscape.tolerance() == 0.03
    assert landscape.targets("noise") == {2, 3}
    assert landscape.targets("fraction") == {1, 2, 3}


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = make_landscape(tmp_path / "l.jsonl", {v: steady(10, 10) for v in "abcd"})
    with open(path, "a") as handle:
        handle.write('{"kind": "measurement", "config": 0, "rep')
    assert len(read_landscape(path).measurements) == 12


def test_a_clearly_slow_trial_costs_only_the_steps_that_ran(tmp_path: Path) -> None:
    # References a (10/s) and b (100/s) complete; c runs at 5/s (20 s steps of 100 voxels). Its first step
    # is stopped while it runs, at the first 0.2 s poll where its time less the driver's 1 s of slack
    # passes 2 s: from then on its figure is below half of 100/s whatever the step's end.
    path = make_landscape(tmp_path / "l.jsonl", {
        "a": steady(10, 10), "b": steady(100, 1), "c": steady(5, 20), "d": steady(90, 100 / 90),
    })
    run = replay(read_landscape(path), optuna.samplers.RandomSampler(seed=0), 0, first=[{"k": "c"}], until_target=False)
    assert run.history[:3] == [(0, "complete"), (1, "complete"), (2, "pruned")]
    pruned_cost = 85.0 - 4 * 20.0 + 3.2  # set-up and warm-up (the run less its steps), then 3.2 s of step 1
    assert run.wasted_s == pytest.approx(pruned_cost)


def test_a_slow_step_is_stopped_at_the_first_poll_that_decides(tmp_path: Path) -> None:
    from autotune.replay import running_limit

    # the bound is the time into the step less 1 s of slack: past 3 s at the poll of 4.2 s
    assert running_limit([10.0], lambda step: step > 3.0) == pytest.approx(4.2)
    assert running_limit([10.0], lambda step: step > 9.5) is None  # it ends first: judged after it
    assert running_limit([1.1], lambda step: True) is None  # shorter than the slack and one poll
    # later steps: the median of [1, 1, t] is 1 until t passes 1, so the earlier steps hold it down
    assert running_limit([1.0, 1.0, 9.0], lambda step: step > 1.5) is None
    assert running_limit([3.0, 5.0, 9.0], lambda step: step > 4.0) == pytest.approx(5.2)


def test_without_pruning_a_slow_trial_costs_its_whole_run(tmp_path: Path) -> None:
    path = make_landscape(tmp_path / "l.jsonl", {
        "a": steady(10, 10), "b": steady(100, 1), "c": steady(5, 20), "d": steady(90, 100 / 90),
    })
    run = replay(read_landscape(path), optuna.samplers.RandomSampler(seed=0), 0, first=[{"k": "c"}],
                 prune=False, until_target=False)
    assert run.history[2] == (2, "complete")
    assert run.wasted_s == 0.0


def test_a_warm_up_far_longer_than_the_best_step_is_pruned_at_the_limit(tmp_path: Path) -> None:
    # c compiles for 500 s: pruned after max(60 s, 30 x the best step of 1 s) past its 3 s set-up.
    slow_warmup = [{"value": 100.0, "warmup_seconds": (500.0,), "wall_seconds": 510.0} for _ in range(3)]
    path = make_landscape(tmp_path / "l.jsonl", {
        "a": steady(10, 10), "b": steady(100, 1), "c": slow_warmup, "d": steady(90, 100 / 90),
    })
    run = replay(read_landscape(path), optuna.samplers.RandomSampler(seed=0), 0, first=[{"k": "c"}], until_target=False)
    assert run.history[2] == (2, "pruned")
    assert run.wasted_s == pytest.approx(3.0 + 60.0)


def test_a_repeat_costs_nothing_and_each_configuration_is_paid_once(tmp_path: Path) -> None:
    path = make_landscape(tmp_path / "l.jsonl", {v: steady(10 * (i + 1), 10 / (i + 1)) for i, v in enumerate("abcd")})
    landscape = read_landscape(path)
    run = replay(landscape, optuna.samplers.RandomSampler(seed=3), 0, limit=100, until_target=False)
    assert run.measured == 4
    assert sorted(cid for cid, _ in run.history) == [0, 1, 2, 3]


def test_each_measurement_draws_one_recorded_repeat(tmp_path: Path) -> None:
    # d's three repeats took 10, 20 and 30 s: seeds draw different ones.
    d = [{"value": 100.0, "wall_seconds": w} for w in (10.0, 20.0, 30.0)]
    path = make_landscape(tmp_path / "l.jsonl", {"a": steady(10, 10), "b": steady(50, 2), "c": steady(20, 5), "d": d})
    landscape = read_landscape(path)
    costs = {replay(landscape, optuna.samplers.RandomSampler(seed=0), seed, first=[{"k": "d"}]).seconds["noise"]
             for seed in range(12)}
    assert {c - 45.0 - 13.0 for c in costs} == {10.0, 20.0, 30.0}


def test_the_target_counts_trials_until_a_best_configuration_completes(tmp_path: Path) -> None:
    path = make_landscape(tmp_path / "l.jsonl", {
        "a": steady(10, 10), "b": steady(50, 2), "c": steady(20, 5), "d": steady(100, 1),
    })
    run = replay(read_landscape(path), optuna.samplers.RandomSampler(seed=0), 0, first=[{"k": "d"}])
    assert run.trials == {"noise": 3, "fraction": 3}
    assert run.seconds["noise"] == pytest.approx(45.0 + 13.0 + 9.0)


def test_a_warm_start_takes_another_landscapes_best_first(tmp_path: Path) -> None:
    path = make_landscape(tmp_path / "l.jsonl", {
        "a": steady(10, 10), "b": steady(50, 2), "c": steady(100, 1), "d": steady(80, 1.25),
    })
    assert top_params(read_landscape(path), 2) == [{"k": "c"}, {"k": "d"}]


def test_the_recorder_file_round_trips(tmp_path: Path) -> None:
    path = make_landscape(tmp_path / "l.jsonl", {v: steady(10, 10) for v in "abcd"})
    first = json.loads(path.read_text().splitlines()[0])
    assert first["kind"] == "landscape" and first["schema"] == 1
    landscape = read_landscape(path)
    assert landscape.recording_seconds() == pytest.approx(12 * 45.0)
    assert landscape.measurements[0].start_seconds == pytest.approx(45.0 - 2.0 - 40.0)


def test_a_landscapes_bad_configurations_are_priors_that_cost_nothing(tmp_path: Path) -> None:
    # c (5/s) is below half the best (d, 100/s): known-bad; the references a and b are never listed.
    path = make_landscape(tmp_path / "l.jsonl", {
        "a": steady(10, 10), "b": steady(100, 1), "c": steady(5, 20), "d": steady(90, 100 / 90),
    })
    landscape = read_landscape(path)
    assert bad_params(landscape) == [{"k": "c"}]

    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=0)
    run = replay(landscape, sampler, 0, prior=[{"k": "c"}], limit=3, until_target=False)

    # the references, then the sampler's first choice: d, not the known-bad c (which costs nothing)
    assert [cid for cid, _ in run.history] == [0, 1, 3]
    assert run.measured == 3 and run.wasted_s == 0.0
