"""Search spaces with instances: conditions over an int range, thread knobs bounded by one instance's
cores, and the launchers' rules resolved on fake topologies."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

from autotune.space import HostFacts, SpaceError, bundled_space, load_space

sys.path.insert(0, str(Path(__file__).parent))
from topologies import epyc_2core, xeon_8180, xeon_snc


@pytest.fixture
def unet3d_8180(tmp_path):
    return load_space(bundled_space("unet3d"), HostFacts.of(xeon_8180(tmp_path)))


def layout_of(space, config):
    return {k: config[k] for k in ("instances", "cores_per_instance", "intra_threads", "inter_threads",
                                   "omp_num_threads")}


def test_rules_on_the_8180(unet3d_8180):
    space = unet3d_8180
    assert space.roles() == ("baseline", "vendor_recommended", "throughput_rule", "mlperf_rule")
    assert layout_of(space, space.reference("throughput_rule")) == {
        "instances": 2, "cores_per_instance": 28, "intra_threads": 28, "inter_threads": 2, "omp_num_threads": 28}
    assert layout_of(space, space.reference("mlperf_rule")) == {
        "instances": 14, "cores_per_instance": 4, "intra_threads": 4, "inter_threads": 2, "omp_num_threads": 4}
    vendor = space.reference("vendor_recommended")
    assert (vendor["instances"], vendor["intra_threads"], vendor["omp_num_threads"]) == (1, 28, 56)


def test_rules_on_four_nodes_and_on_this_host(tmp_path):
    snc = load_space(bundled_space("unet3d"), HostFacts.of(xeon_snc(tmp_path / "snc")))
    assert snc.instances(snc.reference("throughput_rule")) == (4, 14)
    assert snc.instances(snc.reference("mlperf_rule")) == (12, 4)
    small = load_space(bundled_space("unet3d"), HostFacts.of(epyc_2core(tmp_path / "epyc")))
    vendor = small.fingerprint_config(small.reference("vendor_recommended"))
    assert small.fingerprint_config(small.reference("throughput_rule")) == vendor
    assert small.fingerprint_config(small.reference("mlperf_rule")) == vendor


def test_cores_per_instance_is_active_only_with_several(unet3d_8180):
    knob = unet3d_8180.knobs["cores_per_instance"]
    assert knob.when["instances"] == tuple(range(2, 57))
    assert not knob.active({"instances": 1}) and knob.active({"instances": 3})
    assert unet3d_8180.knobs["affinity"].when == {"instances": (1,)}


def test_one_core_host_never_activates_cores_per_instance(tmp_path):
    from dataclasses import replace

    host = replace(epyc_2core(tmp_path), usable_cpus=(0,))
    space = load_space(bundled_space("unet3d"), HostFacts.of(host))
    assert space.knobs["cores_per_instance"].when["instances"] == ()
    assert "cores_per_instance" not in space.searched({})


def test_suggestions_stay_inside_the_host_and_each_instance(unet3d_8180):
    space = unet3d_8180
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(200):
        config = space.suggest(study.ask())
        n, per = space.instances(config)
        if per is not None:
            assert n * per <= 56
            assert config["intra_threads"] <= per and config["inter_threads"] <= per
            assert config["omp_num_threads"] <= per


def test_configurations_the_host_cannot_hold_are_refused(unet3d_8180):
    with pytest.raises(SpaceError, match="30 x 2 cores needs 60 physical cores; this host has 56"):
        unet3d_8180.configure({"instances": 30, "cores_per_instance": 2})
    with pytest.raises(SpaceError, match="intra_threads: 8 threads in an instance of 4 cores"):
        unet3d_8180.configure({"instances": 14, "cores_per_instance": 4, "intra_threads": 8})
    # a reference's thread counts are lowered to the instance's cores; a pin is not
    pinned = unet3d_8180.reference("vendor_recommended", {"instances": 2, "cores_per_instance": 8})
    assert pinned["intra_threads"] == 8 and pinned["omp_num_threads"] == 8


def test_threads_must_be_an_int_knob(space_from_toml):
    with pytest.raises(SpaceError, match="threads: only an int knob counts threads"):
        space_from_toml("""
[workload]
name = "x"
module = "workloads.fake"
objective = { name = "v", unit = "v/s" }
[knobs.a]
type = "bool"
default = false
target = "param"
threads = true
[baseline]
[vendor_recommended]
""")


def test_several_instances_need_a_throughput_objective(tmp_path):
    text = bundled_space("unet3d").read_text().replace('direction = "maximize"', 'direction = "minimize"', 1)
    path = tmp_path / "latency.toml"
    path.write_text(text)
    space = load_space(path, HostFacts.of(xeon_8180(tmp_path / "host")))
    with pytest.raises(SpaceError, match="is minimized"):
        space.configure({"instances": 2, "cores_per_instance": 4})
    assert space.configure({"instances": 1})["instances"] == 1
    assert space.roles() == ("baseline", "vendor_recommended")  # the rules are throughput rules
