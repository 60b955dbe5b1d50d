"""The child side of the op-time breakdown: reading the TensorFlow profiler's trace.

One real profile of a tiny U-Net (the baseline layout, where Keras 3 sends every Conv3D through XLA)
checks what TensorFlow 2.21 actually writes; hand-built XPlanes pin down the nesting rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autotune.profile import BREAKDOWN_FILE, BREAKDOWN_KIND, CONV, TRANSPOSE, XLA, Breakdown
from autotune.protocol import LINE_PREFIX, TrialConfig
from workloads.unet3d import profile as child

TINY = {"patch": "16", "base_filters": 4, "depth": 3, "image_size": 32, "steps": 2, "warmup": 1}


def test_the_driver_and_the_child_agree_on_the_document() -> None:
    assert child.BREAKDOWN_FILE == BREAKDOWN_FILE
    assert child.BREAKDOWN_KIND == BREAKDOWN_KIND


@pytest.fixture(scope="module")
def real_profile(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str]]:
    """One profiled trial of the tiny U-Net, channels_first with oneDNN off (the baseline)."""
    folder = tmp_path_factory.mktemp("profile")
    config = folder / "config.json"
    config.write_text(TrialConfig("unet3d", {**TINY, "profile_dir": str(folder / "out")}).to_json())
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0",
           "AUTOTUNE_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    done = subprocess.run([sys.executable, "-m", "workloads.unet3d", "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    kinds = [json.loads(line[len(LINE_PREFIX):])["kind"] for line in done.stdout.splitlines()
             if line.startswith(LINE_PREFIX)]
    return json.loads((folder / "out" / BREAKDOWN_FILE).read_text()), kinds


@pytest.mark.tf
def test_real_profile_of_the_baseline_layout(real_profile) -> None:
    document, kinds = real_profile
    assert kinds[-1] == "result"  # profiling does not change the protocol
    assert kinds.count("step") == 3
    breakdown = Breakdown.from_dict(document)
    assert breakdown.steps == 2
    assert 0 < breakdown.busy_seconds <= breakdown.wall_seconds * 1.05
    # Nested events are counted once: the self times of two threads can overlap a little, no more.
    assert breakdown.op_seconds <= 1.5 * breakdown.busy_seconds
    assert breakdown.op_seconds >= 0.5 * breakdown.busy_seconds
    types = {op.type: op for op in breakdown.by_type}
    # Keras 3 runs channels_first Conv3D through XLA: transpose, convolution, transpose per call.
    assert {"xla:convolution", "xla:transpose_copy_fusion", "StatefulPartitionedCall"} <= set(types)
    assert types["xla:transpose_copy_fusion"].count >= 2 * types["xla:convolution"].count
    assert {"LeakyRelu", "Mean", "SquaredDifference", "ConcatV2"} <= set(types)
    categories = breakdown.categories()
    assert max(categories, key=categories.get) == CONV
    assert categories[TRANSPOSE] > 0 and categories[XLA] > 0
    assert all(op.seconds >= 0 and op.count > 0 for op in breakdown.by_type)
    names = [op.name for op in breakdown.top_ops]
    assert names == sorted(names, key=lambda n: -next(o.seconds for o in breakdown.top_ops if o.name == n))
    assert any(n.endswith("_conv_1/StatefulPartitionedCall/convolution") for n in names)
    assert document["source"]["tensorflow"].startswith("2.")


# Hand-built traces: times in picoseconds; what tf_Compute and an intra-op pool thread record.


def _plane(lines: list[list[tuple]]):
    """An XPlane of ``lines``, each a list of (name, start, duration, stats, display_name)."""
    xplane_pb2 = child.xplane_module()
    plane = xplane_pb2.XPlane(id=1, name=child.HOST_PLANE)
    stat_ids: dict[str, int] = {}
    event_ids: dict[tuple[str, str], int] = {}

    def stat_id(name: str) -> int:
        if name not in stat_ids:
            stat_ids[name] = len(stat_ids) + 1
            plane.stat_metadata[stat_ids[name]].id = stat_ids[name]
            plane.stat_metadata[stat_ids[name]].name = name
        return stat_ids[name]

    for index, events in enumerate(lines):
        line = plane.lines.add(id=index, name=f"thread{index}", timestamp_ns=0)
        for name, start, duration, stats, display in events:
            key = (name, display)
            if key not in event_ids:
                event_ids[key] = len(event_ids) + 1
                meta = plane.event_metadata[event_ids[key]]
                meta.id, meta.name, meta.display_name = event_ids[key], name, display
            event = line.events.add(metadata_id=event_ids[key], offset_ps=start, duration_ps=duration)
            for stat_name, value in stats.items():
                stat = event.stats.add(metadata_id=stat_id(stat_name))
                if isinstance(value, str):
                    stat.ref_value = stat_id(value)
                else:
                    stat.int64_value = value
    return plane


def _hlo(name: str, start: int, duration: int, flow: int, program: int = 7) -> tuple:
    stats = {"hlo_op": name, "hlo_module": "a_inference__conv_xla_1__.1", "program_id": program,
             "_p": flow}
    return (name, start, duration, stats, "")


CALL = {"name": "model/conv/StatefulPartitionedCall", "kernel_type": "StatefulPartitionedCall"}


@pytest.mark.tf
def test_hand_built_trace_counts_self_time_once() -> None:
    executor = [
        ("ExecutorState::Process", 0, 2000, {}, ""),
        ("ExecutorState::ProcessAsync::Start", 0, 1500, {**CALL, "_p": 1}, ""),
        ("CpuExecutable::ExecuteAsyncOnStream", 5, 700, {}, ""),
        _hlo("transpose_copy_fusion.1", 10, 10, 2),
        ("end: transpose_copy_fusion.1", 20, 0, {"_c": 2}, ""),
        _hlo("convolution", 20, 30, 3),  # the launch: the work goes on in the pool
        ("BlockUntilReady", 50, 600, {}, ""),
        ("ExecutorState::ProcessAsync::Done", 800, 650, {**CALL, "_c": 1}, ""),
        ("model/norm/moments/mean:Mean", 1500, 50, {}, "Mean"),
        ("model/act/LeakyRelu:LeakyRelu", 1550, 20, {}, "LeakyRelu"),
    ]
    worker = [
        _hlo("transpose_copy_fusion", 600, 50, 4),
        ("end: transpose_copy_fusion", 649, 1, {"_c": 4}, ""),
        ("end: convolution", 700, 1, {"_c": 3}, ""),  # recorded after running its successor
    ]
    events = child.op_events(_plane([executor, worker]))
    by_name = {e.name: e for e in events}
    assert set(by_name) == {"model/conv/StatefulPartitionedCall", "transpose_copy_fusion.1", "convolution",
                            "transpose_copy_fusion", "model/norm/moments/mean", "model/act/LeakyRelu"}
    call = by_name["model/conv/StatefulPartitionedCall"]
    assert call.end - call.start == 800  # up to its completion callback, not the Start event's end
    conv = by_name["convolution"]
    assert (conv.start, conv.end) == (20, 600)  # to the successor its completion started
    assert by_name["transpose_copy_fusion"].parent is call  # found on the pool thread by program
    assert child.self_ps(call) == 800 - (10 + 580 + 50)
    document = child.breakdown_document(events, steps=1, wall_seconds=2e-9)
    seconds = {d["type"]: d["seconds"] * child.PS_PER_S for d in document["by_type"]}
    assert seconds == pytest.approx({"StatefulPartitionedCall": 160, "xla:transpose_copy_fusion": 60,
                                     "xla:convolution": 580, "Mean": 50, "LeakyRelu": 20})
    assert document["busy_seconds"] * child.PS_PER_S == pytest.approx(800 + 70)
    names = {d["name"] for d in document["top_ops"]}
    assert "model/conv/StatefulPartitionedCall/convolution" in names
    assert Breakdown.from_dict(document).share(TRANSPOSE) == pytest.approx(60 / 870)


@pytest.mark.tf
def test_hand_built_trace_nests_tf_ops_and_keeps_orphans() -> None:
    executor = [
        ("cluster_0/xla_run:_XlaRun", 0, 100, {}, "_XlaRun"),
        _hlo("fusion.3", 10, 40, 9, program=3),
        ("model/concat:ConcatV2", 200, 10, {}, "ConcatV2"),
    ]
    worker = [_hlo("dot", 500, 20, 10, program=5)]  # no call encloses it
    events = child.op_events(_plane([executor, worker]))
    by_name = {e.name: e for e in events}
    assert by_name["fusion.3"].parent is by_name["cluster_0/xla_run"]
    assert child.self_ps(by_name["cluster_0/xla_run"]) == 60
    assert by_name["dot"].parent is None
    assert child.display_name(by_name["dot"]) == "a_inference__conv_xla_1__.1/dot"


@pytest.mark.parametrize(
    ("name", "display", "stats", "expected"),
    [
        ("model/conv/Conv3D:Conv3D", "Conv3D", {}, ("tf", "Conv3D", "model/conv/Conv3D")),
        ("m/c/BiasAdd:_MklNativeFusedConv3D", "", {}, ("tf", "_MklNativeFusedConv3D", "m/c/BiasAdd")),
        ("convolution.18", "", {"hlo_op": "convolution.18"}, ("hlo", "xla:convolution", "convolution.18")),
        ("x", "", {"hlo_op": "transpose_copy_fusion.1"},
         ("hlo", "xla:transpose_copy_fusion", "transpose_copy_fusion.1")),
        (child.ASYNC_START, "", {"kernel_type": "PartitionedCall", "name": "m/PartitionedCall_3"},
         ("call", "PartitionedCall", "m/PartitionedCall_3")),
        ("ExecutorState::Process", "", {}, None),
        ("CpuExecutable::ExecuteAsyncOnStream", "", {}, None),
        ("EagerLocalExecute: AssignVariableOp", "", {}, None),
        ("end: convolution", "", {}, None),
        ("one_step_on_data_distributed", "", {}, None),
        (child.ASYNC_START, "", {}, None),
    ],
)
def test_classify_event(name: str, display: str, stats: dict, expected: tuple | None) -> None:
    event = child.classify_event(name, display, stats, line=0, start=0, end=1)
    assert (None if event is None else (event.kind, event.type, event.name)) == expected


def test_union_length() -> None:
    assert child.union_length([]) == 0
    assert child.union_length([(0, 10), (5, 15), (20, 25), (3, 3)]) == 20
