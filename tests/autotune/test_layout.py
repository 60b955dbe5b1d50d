"""Instance layouts planned on fake topology trees: this 2-core host, a 2-socket 8180, a 4-node host."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from autotune.errors import UserError
from autotune.layout import (
    Layout,
    LayoutError,
    Slot,
    membind_note,
    membind_prefix,
    mlperf_rule,
    plan_layout,
    throughput_rule,
)

sys.path.insert(0, str(Path(__file__).parent))
from topologies import epyc_2core, xeon_8180, xeon_snc


def test_two_core_host_plans(tmp_path: Path) -> None:
    host = epyc_2core(tmp_path)
    assert plan_layout(host, 2, 1).slots == (Slot((0,)), Slot((1,)))
    assert plan_layout(host, 1, 2).slots == (Slot((0, 1)),)
    assert throughput_rule(host) == (1, 2)
    assert mlperf_rule(host) == (1, 2)  # fewer than 4 cores: one instance of all of them
    with pytest.raises(LayoutError, match="needs 4 physical cores; 2 are usable"):
        plan_layout(host, 2, 2)


def test_8180_plans(tmp_path: Path) -> None:
    host = xeon_8180(tmp_path)
    assert throughput_rule(host) == (2, 28)
    assert mlperf_rule(host) == (14, 4)
    rule = plan_layout(host, 2, 28)
    assert rule.slots[0].cpus == tuple(range(28)) and rule.slots[0].nodes == (0,)
    assert rule.slots[1].cpus == tuple(range(28, 56)) and rule.slots[1].nodes == (1,)
    mlperf = plan_layout(host, 14, 4)
    assert [s.cpus for s in mlperf.slots[:2]] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert mlperf.slots[7].cpus == (28, 29, 30, 31) and mlperf.slots[7].nodes == (1,)
    smt = plan_layout(host, 2, 2, hyperthreads=True)
    assert smt.slots == (Slot((0, 1, 56, 57), (0,)), Slot((2, 3, 58, 59), (0,)))
    whole = plan_layout(host, 1, 56)
    assert whole.slots[0].nodes == (0, 1) and len(whole.slots[0].cpus) == 56


def test_8180_keeps_an_instance_on_one_node(tmp_path: Path) -> None:
    host = xeon_8180(tmp_path)
    # 3 x 18 = 54 of 56 cores, but each 28-core node holds only one 18-core instance
    with pytest.raises(LayoutError, match="splitting an instance across NUMA nodes"):
        plan_layout(host, 3, 18)
    assert [s.nodes for s in plan_layout(host, 2, 18).slots] == [(0,), (1,)]


def test_four_node_plans(tmp_path: Path) -> None:
    host = xeon_snc(tmp_path)
    assert throughput_rule(host) == (4, 14)
    assert mlperf_rule(host) == (12, 4)  # 3 instances of 4 cores in each node of 14
    rule = plan_layout(host, 4, 14)
    assert [s.nodes for s in rule.slots] == [(0,), (1,), (2,), (3,)]
    assert rule.slots[1].cpus == tuple(range(14, 28))
    # 4 cores per instance: 3 fit in a node of 14, so 12 instances, not 14
    with pytest.raises(LayoutError, match="hold 12"):
        plan_layout(host, 14, 4)


def test_unusable_cores_are_not_planned(tmp_path: Path) -> None:
    root = tmp_path
    host = xeon_8180(root)
    from dataclasses import replace

    confined = replace(host, usable_cpus=tuple(range(4, 8)))
    assert plan_layout(confined, 2, 2).slots[0].cpus == (4, 5)
    with pytest.raises(LayoutError, match="4 are usable"):
        plan_layout(confined, 3, 2)


def test_layout_round_trip_and_membind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = plan_layout(xeon_8180(tmp_path), 2, 4)
    assert Layout.from_dict(layout.to_dict()) == layout
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert membind_prefix(layout.slots[0]) == []
    assert "numactl is not installed" in (membind_note(layout) or "")
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/numactl")
    assert membind_prefix(layout.slots[0]) == ["/usr/bin/numactl", "--membind=0"]
    assert membind_prefix(Slot((0, 1))) == []  # one node: nothing to bind


@pytest.mark.parametrize("data", [{"cpus": [[0], [0]], "cores_per_instance": 1}, {"cpus": [], "cores_per_instance": 1},
                                  {"cpus": "0", "cores_per_instance": 1}])
def test_bad_layout_records(data: dict) -> None:
    with pytest.raises(UserError, match="instances"):
        Layout.from_dict(data)
