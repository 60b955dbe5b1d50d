"""The driver side of the op-time breakdown: categories, the record, rendering, running, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from autotune import cli
from autotune import profile as op_profile
from autotune.errors import UserError
from autotune.measurer import Measurer
from autotune.profile import (
    BREAKDOWN_FILE,
    CATEGORIES,
    CONV,
    ELEMENTWISE,
    MOVEMENT,
    NORMALIZATION,
    OTHER,
    TRANSPOSE,
    XLA,
    Breakdown,
    OpTime,
    ProfileFailed,
    categorize,
    compare,
    markdown_table,
    profile_config,
)
from autotune.protocol import SCHEMA_VERSION, Outcome, ProtocolError, TrialResult
from autotune.runner import TrialOutcome, TrialSpec

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "data" / "fake.toml"


@pytest.mark.parametrize(
    ("op_type", "category"),
    [
        ("Conv3D", CONV),
        ("Conv3DBackpropInputV2", CONV),
        ("Conv3DBackpropFilterV2", CONV),
        ("_MklNativeFusedConv3D", CONV),
        ("_MklNativeConv3DBackpropFilterV2", CONV),
        ("_FusedConv3D", CONV),
        ("xla:convolution", CONV),
        ("xla:convolution-base-dilated", CONV),
        ("xla:dot", CONV),
        ("xla:convolution_add_fusion", CONV),
        ("Transpose", TRANSPOSE),
        ("_MklTranspose", TRANSPOSE),
        ("ConjugateTranspose", TRANSPOSE),
        ("xla:transpose_copy_fusion", TRANSPOSE),
        ("xla:transpose", TRANSPOSE),
        ("Mean", NORMALIZATION),
        ("SquaredDifference", NORMALIZATION),
        ("Rsqrt", NORMALIZATION),
        ("FusedBatchNormV3", NORMALIZATION),
        ("_MklFusedBatchNormGradV3", NORMALIZATION),
        ("_MklFusedInstanceNorm", NORMALIZATION),
        ("xla:add_rsqrt_fusion", NORMALIZATION),
        ("xla:add_reduce_fusion", NORMALIZATION),
        ("AddV2", ELEMENTWISE),
        ("Mul", ELEMENTWISE),
        ("LeakyRelu", ELEMENTWISE),
        ("LeakyReluGrad", ELEMENTWISE),
        ("Sigmoid", ELEMENTWISE),
        ("BiasAdd", ELEMENTWISE),
        ("_MklAdd", ELEMENTWISE),
        ("xla:multiply_select_fusion", ELEMENTWISE),
        ("ConcatV2", MOVEMENT),
        ("_MklConcatV2", MOVEMENT),
        ("Pad", MOVEMENT),
        ("StridedSlice", MOVEMENT),
        ("Tile", MOVEMENT),
        ("ResizeNearestNeighbor", MOVEMENT),
        ("_MklToTf", MOVEMENT),
        ("xla:select_concatenate_fusion", MOVEMENT),
        ("xla:bitcast_copy_fusion", MOVEMENT),
        ("xla:wrapped_copy", MOVEMENT),
        ("_XlaRun", XLA),
        ("XlaLaunch", XLA),
        ("StatefulPartitionedCall", XLA),
        ("cluster_3", XLA),
        ("xla:fusion", XLA),
        ("xla:loop_fusion", XLA),
        ("ReadVariableOp", OTHER),
        ("ResourceApplyAdam", OTHER),
        ("Sum", OTHER),
    ],
)
def test_categorize(op_type: str, category: str) -> None:
    assert categorize(op_type) == category


def breakdown(seconds: dict[str, float], *, steps: int = 2, wall: float | None = None) -> Breakdown:
    """A breakdown with one op type per entry of ``seconds`` (over all steps)."""
    total = sum(seconds.values())
    by_type = tuple(OpTime(t, s, 3) for t, s in sorted(seconds.items(), key=lambda i: -i[1]))
    top = tuple(OpTime(t, s, 1, name=f"model/{t.lower()}") for t, s in list(seconds.items())[:2])
    return Breakdown(steps=steps, wall_seconds=wall if wall is not None else total,
                     busy_seconds=0.9 * total, by_type=by_type, top_ops=top)


BASELINE = breakdown({"xla:convolution": 0.60, "xla:transpose_copy_fusion": 0.31,
                      "StatefulPartitionedCall": 0.01, "Mean": 0.05, "AddV2": 0.03})
BEST = breakdown({"_MklNativeFusedConv3D": 0.07, "Mean": 0.02, "AddV2": 0.01})


def test_breakdown_round_trips_through_json() -> None:
    data = json.loads(json.dumps(BASELINE.to_dict()))
    assert Breakdown.from_dict(data) == BASELINE
    assert data["categories"][TRANSPOSE] == pytest.approx(0.31)
    assert data["by_type"][0] == {"type": "xla:convolution", "category": CONV, "seconds": 0.6, "count": 3}
    assert data["top_ops"][0]["name"] == "model/xla:convolution"


def test_breakdown_reads_the_workloads_document() -> None:
    document = {"kind": "autotune-op-breakdown", "schema": 1, "steps": 3, "wall_seconds": 1.0,
                "busy_seconds": 0.9, "source": {"tensorflow": "2.21.0"},
                "by_type": [{"type": "Conv3D", "seconds": 0.5, "count": 30}],
                "top_ops": [{"name": "m/c", "type": "Conv3D", "seconds": 0.1, "count": 3}]}
    read = Breakdown.from_dict(document)
    assert read.by_type == (OpTime("Conv3D", 0.5, 30),)
    assert read.top_ops[0].name == "m/c"
    assert read.per_step(read.op_seconds) == pytest.approx(0.5 / 3)


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "autotune-best"},
        {"schema": 99},
        {"steps": 0},
        {"steps": True},
        {"wall_seconds": -1},
        {"busy_seconds": "1"},
        {"by_type": {}},
        {"by_type": [{"type": "Conv3D", "seconds": -0.1, "count": 1}]},
        {"top_ops": [{"type": 3, "seconds": 0.1, "count": 1}]},
        {"top_ops": [{"type": "Mul", "seconds": 0.1, "count": 1.5}]},
    ],
)
def test_breakdown_rejects_malformed_documents(change: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        Breakdown.from_dict({**BASELINE.to_dict(), **change})
    with pytest.raises(ProtocolError):
        Breakdown.from_dict([])


def test_categories_and_shares() -> None:
    categories = BASELINE.categories()
    assert list(categories) == list(CATEGORIES)
    assert categories[CONV] == pytest.approx(0.60)
    assert categories[XLA] == pytest.approx(0.01)
    assert sum(BASELINE.share(c) for c in CATEGORIES) == pytest.approx(1.0)
    assert BASELINE.share(TRANSPOSE) == pytest.approx(0.31)
    empty = Breakdown(steps=1, wall_seconds=0.0, busy_seconds=0.0, by_type=())
    assert empty.share(CONV) == 0.0


def test_compare_names_the_biggest_difference() -> None:
    # Conv3D share: 60% -> 70%, normalization 5% -> 20%, transposes 31% -> 0%.
    assert compare(BASELINE, BEST) == (
        "Transpose ops: 31% of baseline time (155.0 ms/step), 0% in best (0.0 ms/step)."
    )


def test_compare_picks_categories_the_best_spends_more_on() -> None:
    base = breakdown({"Conv3D": 0.5, "Mean": 0.3, "AddV2": 0.2})
    best = breakdown({"Conv3D": 0.4, "Mean": 0.5, "AddV2": 0.1})
    assert compare(base, best) == (
        "Normalization ops: 30% of baseline time (150.0 ms/step), 50% in best (250.0 ms/step)."
    )


def test_compare_without_op_time() -> None:
    empty = Breakdown(steps=1, wall_seconds=1.0, busy_seconds=0.0, by_type=())
    assert "cannot be compared" in compare(empty, BEST)


def test_markdown_table_side_by_side() -> None:
    text = markdown_table({"baseline": BASELINE, "best": BEST})
    lines = text.splitlines()
    assert lines[0] == "| category | baseline ms/step | baseline share | best ms/step | best share |"
    assert "| Transpose | 155.0 | 31.0% | 0.0 | 0.0% |" in lines
    assert "| Conv3D | 300.0 | 60.0% | 35.0 | 70.0% |" in lines
    assert not any(line.startswith("| other |") for line in lines)  # empty everywhere: left out
    assert lines[-2] == "| all ops | 500.0 | 100% | 50.0 | 100% |"
    assert lines[-1].startswith("| step wall time (ops busy) | 500.0 | (90% busy) |")
    assert "| op | type | ms/step | share |" in op_profile.markdown_top_ops(BASELINE)
    assert "| xla:convolution | Conv3D | 300.0 | 60.0% | 1.5 |" in op_profile.markdown_types(BASELINE)


class _StubRunner:
    """Stands in for the trial runner: records the spec and plays the workload's part."""

    def __init__(self, outcome: Outcome = Outcome.OK, document: dict | None = None) -> None:
        self.outcome = outcome
        self.document = document
        self.spec: TrialSpec | None = None

    def run(self, spec: TrialSpec, on_step=None, on_wait=None, on_running=None) -> TrialOutcome:
        self.spec = spec
        folder = Path(spec.config.params["profile_dir"])
        assert folder.is_dir()
        if self.document is not None:
            (folder / BREAKDOWN_FILE).write_text(json.dumps(self.document))
        if self.outcome is not Outcome.OK:
            return TrialOutcome(self.outcome, reason="killed by signal SIGSEGV")
        result = TrialResult.from_dict({
            "schema": SCHEMA_VERSION, "workload": "fake", "params": {}, "warmup_seconds": [0.1],
            "step_seconds": [0.1], "median_step_s": 0.1, "mad_step_s": 0.0, "cv": 0.0, "work_per_step": 1,
            "figures": {"voxels_per_s": 10.0}, "peak_rss_mb": 1.0, "setup_seconds": 0.1,
        })
        return TrialOutcome(Outcome.OK, result=result)


def test_profile_config_runs_the_config_with_a_profile_dir(fake_space, host) -> None:
    config = fake_space.reference("baseline", {"steps": 7, "warmup": 0})
    runner = _StubRunner(document=BASELINE.to_dict())
    got = profile_config(Measurer(fake_space, host, timeout_s=12.0, memory_cap_mb=300.0, runner=runner), config,
                         steps=2)
    assert got == BASELINE
    spec = runner.spec
    assert spec.config.timed_steps == 2
    assert spec.config.params["warmup"] == 1  # XLA compiles in the warm-up: never profiled
    assert spec.timeout_s == 12.0 and spec.memory_cap_mb == 300.0
    assert spec.env["TF_ENABLE_ONEDNN_OPTS"] == "0"  # launched exactly as the config says
    assert not Path(spec.config.params["profile_dir"]).exists()  # a temporary folder


def test_profile_config_failures_are_profile_failed(fake_space, host) -> None:
    config = fake_space.reference("baseline")
    with pytest.raises(ProfileFailed, match="crashed: killed by signal SIGSEGV") as failed:
        profile_config(Measurer(fake_space, host, runner=_StubRunner(Outcome.CRASHED)), config)
    assert failed.value.outcome.outcome is Outcome.CRASHED
    with pytest.raises(ProfileFailed, match=r"wrote no breakdown\.json"):
        profile_config(Measurer(fake_space, host, runner=_StubRunner()), config)
    with pytest.raises(ProfileFailed, match=r"unreadable breakdown\.json"):
        profile_config(Measurer(fake_space, host, runner=_StubRunner(document={"kind": "x"})), config)


def test_profile_config_of_a_workload_without_profiling(fake_space, host) -> None:
    """The fake workload, a real subprocess, ignores profile_dir: a clear failure, not a crash."""
    config = fake_space.reference("vendor_recommended", {"steps": 1})
    with pytest.raises(ProfileFailed, match="does it support profiling"):
        profile_config(Measurer(fake_space, host, timeout_s=60), config)


def autotune(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KMP_", "OMP_"))}
    return subprocess.run([sys.executable, "-m", "autotune", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_unknown_study_is_one_line_exit_2(tmp_path: Path) -> None:
    done = autotune(["profile", "--study", "nope", "--config", "best"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("autotune: error: no study storage at autotune.db")  # not created
    assert "Traceback" not in done.stderr


def test_cli_unknown_config_is_a_usage_error(tmp_path: Path) -> None:
    done = autotune(["profile", "--study", "s", "--config", "worst"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("autotune: error: argument --config: invalid choice: 'worst'")


def _stored_study(tmp_path: Path, fake_space, *, roles: tuple[str, ...]) -> str:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.set_user_attr("workload", "fake")
    for number, role in enumerate(roles):
        reference = role if role != "search" else "vendor_recommended"
        config = fake_space.reference(reference, {"intra_threads": number})
        rate = 10.0 * (number + 1)
        study.add_trial(optuna.trial.create_trial(value=rate, user_attrs={
            "role": role, "config": config, "voxels_per_s": rate, "voxels_per_step": 10,
            "step_seconds": [1 / rate * 10] * 3, "outcome": "ok",
        }))
    return url


def test_cli_study_without_that_config_is_exit_2(tmp_path: Path, fake_space) -> None:
    url = _stored_study(tmp_path, fake_space, roles=("baseline",))
    done = autotune(["profile", "--study", "s", "--config", "vendor", "--storage", url,
                     "--space", str(FAKE)], tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "autotune: error: study 's' has no successful vendor_recommended trial to profile\n"


def test_cli_profiles_the_best_and_shows_it_beside_the_baseline(
    tmp_path: Path, fake_space, host, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _stored_study(tmp_path, fake_space, roles=("baseline", "search", "search"))
    calls = []

    def fake_profile(measurer, config, **kwargs):
        calls.append((config, kwargs))
        return BEST

    monkeypatch.setattr(op_profile, "profile_config", fake_profile)
    monkeypatch.setattr("autotune.host.probe_host", lambda **kwargs: host)
    report_dir = tmp_path / "reports"
    earlier = {"schema": 1, "kind": op_profile.PROFILE_KIND, "breakdown": BASELINE.to_dict()}
    report_dir.mkdir()
    (report_dir / "profile-baseline.json").write_text(json.dumps(earlier))
    status = cli.main(["profile", "--study", "s", "--config", "best", "--storage", url, "--space", str(FAKE),
                       "--report-dir", str(report_dir), "--steps", "2"])
    out = capsys.readouterr().out
    assert status == 0
    assert calls[0][0]["intra_threads"] == 2  # the best trial: the fastest
    assert calls[0][1]["steps"] == 2
    document = json.loads((report_dir / "profile-best.json").read_text())
    assert document["kind"] == op_profile.PROFILE_KIND and document["schema"] == 1
    assert document["config_role"] == "best" and document["trial"] == 2
    assert document["host_fingerprint"] == host.fingerprint
    assert Breakdown.from_dict(document["breakdown"]) == BEST
    assert op_profile.load_profile(report_dir / "profile-best.json") == BEST
    assert "op time by category" in out
    assert "Transpose ops: 31% of baseline time" in " ".join(out.split())


def test_load_profile_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"schema": 1, "kind": "autotune-best"}))
    with pytest.raises(UserError, match="not an autotune profile"):
        op_profile.load_profile(path)
    with pytest.raises(UserError, match="file not found"):
        op_profile.load_profile(tmp_path / "missing.json")
