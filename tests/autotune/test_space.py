from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotune.errors import UserError
from autotune.host import HostInfo, NumaNode, probe_host
from autotune.space import (
    HostFacts,
    SearchSpace,
    SpaceError,
    canonical_shape,
    load_space,
    shape_tuple,
)

REPO = Path(__file__).resolve().parents[2]
UNET3D = REPO / "search_spaces" / "unet3d.toml"
FAKE = REPO / "tests" / "data" / "fake.toml"

BIG_HOST = HostFacts(
    counts={
        "physical_cores": 56, "physical_cores_per_socket": 28, "logical_cpus": 112, "sockets": 2,
    },
    isa={"avx512_bf16": True, "amx_bf16": True},
    allocators=frozenset({"jemalloc", "tcmalloc"}),
)
SMALL_HOST = HostFacts(
    counts={"physical_cores": 4, "physical_cores_per_socket": 4, "logical_cpus": 8, "sockets": 1},
    isa={"avx512_bf16": False},
    allocators=frozenset(),
)

MINIMAL = """
[workload]
name = "mini"
module = "workloads.fake"
objective = { name = "voxels_per_s", unit = "voxels/s" }

[knobs.mode]
type = "categorical"
choices = ["infer", "train"]
default = "infer"
target = "param"

[knobs.threads]
type = "int"
low = 0
high = "logical_cpus"
default = 0
target = "param"

[knobs.onednn]
type = "bool"
default = true
target = "env"
env = "TF_ENABLE_ONEDNN_OPTS"

[baseline]
onednn = false

[vendor_recommended]
threads = "physical_cores"
"""


@pytest.fixture(scope="module")
def this_host() -> HostFacts:
    return HostFacts.of(probe_host(software=False))


@pytest.fixture(scope="module")
def unet_big() -> SearchSpace:
    return load_space(UNET3D, BIG_HOST)


@pytest.fixture(scope="module")
def unet_small() -> SearchSpace:
    return load_space(UNET3D, SMALL_HOST)


def write_space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def test_unet3d_loads_for_this_host(this_host: HostFacts) -> None:
    space = load_space(UNET3D, this_host)
    assert space.workload == "unet3d"
    assert space.module == "workloads.unet3d"
    assert space.knobs["intra_threads"].high == this_host.counts["logical_cpus"]
    assert space.knobs["pin_cores"].high == this_host.counts["physical_cores"]
    vendor = space.reference("vendor_recommended")
    assert vendor["intra_threads"] == this_host.counts["physical_cores_per_socket"]
    assert vendor["inter_threads"] == this_host.counts["sockets"]
    assert vendor["omp_num_threads"] == this_host.counts["physical_cores"]


def test_host_bounds_resolve_for_a_bigger_host(unet_big: SearchSpace) -> None:
    assert (unet_big.knobs["intra_threads"].low, unet_big.knobs["intra_threads"].high) == (0, 112)
    assert unet_big.knobs["omp_num_threads"].high == 112
    assert unet_big.knobs["pin_cores"].high == 56


def test_vendor_recommended_follows_intel_guidance(unet_big: SearchSpace) -> None:
    vendor = unet_big.reference("vendor_recommended")
    assert vendor["intra_threads"] == 28
    assert vendor["inter_threads"] == 2
    assert vendor["omp_num_threads"] == 56
    assert vendor["onednn"] is True
    assert vendor["data_format"] == "channels_last"
    assert vendor["kmp_blocktime"] == "1"
    assert vendor["kmp_affinity"] == "granularity=fine,compact,1,0"
    assert vendor["affinity"] == "socket"


def test_baseline_is_the_untuned_reference(unet_big: SearchSpace) -> None:
    baseline = unet_big.reference("baseline")
    assert set(baseline) == set(unet_big.knobs)
    assert baseline["data_format"] == "channels_first"
    assert baseline["transpose_elimination"] is False
    assert baseline["onednn"] is False
    assert baseline["intra_threads"] == 0
    assert baseline["allocator"] == "system"
    assert baseline["precision"] == "float32"
    assert baseline["patch"] == "128"
    assert unet_big.knobs["onednn"].env_value(baseline["onednn"]) == "0"
    assert unet_big.knobs["omp_num_threads"].env_value(baseline["omp_num_threads"]) is None


def test_reference_applies_pins_on_top(unet_big: SearchSpace) -> None:
    config = unet_big.reference("vendor_recommended", {"intra_threads": 7, "patch": "64,64,64"})
    assert config["intra_threads"] == 7
    assert config["patch"] == "64"
    assert config["inter_threads"] == 2
    with pytest.raises(SpaceError, match="intra_threads"):
        unet_big.reference("baseline", {"intra_threads": 113})


def test_host_facts_count_only_usable_cpus() -> None:
    core_of_cpu = {cpu: ((cpu // 4) % 2, cpu % 4) for cpu in range(16)}
    host = HostInfo(
        cpu_model="Intel(R) Xeon(R) Gold 6338", vendor="GenuineIntel", sockets=2,
        physical_cores=8, logical_cpus=16,
        numa_nodes=(
            NumaNode(0, (0, 1, 2, 3, 8, 9, 10, 11)), NumaNode(1, (4, 5, 6, 7, 12, 13, 14, 15)),
        ),
        core_of_cpu=core_of_cpu, usable_cpus=(0, 1), isa={"avx512_bf16": False},
        memory_bytes=1 << 34, allocators={"jemalloc": "/usr/lib/libjemalloc.so.2"}, software={},
    )
    facts = HostFacts.of(host)
    assert facts.counts == {
        "physical_cores": 2, "physical_cores_per_socket": 2, "logical_cpus": 2, "sockets": 1,
    }
    assert facts.allocators == frozenset({"jemalloc"})
    vendor = load_space(UNET3D, facts).reference("vendor_recommended")
    assert vendor["intra_threads"] == 2


def test_choice_needing_a_missing_cpu_flag_is_dropped(
    unet_small: SearchSpace, unet_big: SearchSpace
) -> None:
    precision = unet_small.knobs["precision"]
    assert precision.choices == ("float32",)
    assert "avx512_bf16" in precision.dropped["mixed_bfloat16"]
    assert unet_big.knobs["precision"].choices == ("float32", "mixed_bfloat16")
    with pytest.raises(SpaceError, match="avx512_bf16") as raised:
        unet_small.parse_assignments(["precision=mixed_bfloat16"])
    assert "not available" in str(raised.value)


def test_allocator_not_found_is_dropped(unet_small: SearchSpace, unet_big: SearchSpace) -> None:
    allocator = unet_small.knobs["allocator"]
    assert allocator.choices == ("system",)
    assert set(allocator.dropped) == {"jemalloc", "tcmalloc", "mimalloc"}
    assert not allocator.searchable()
    assert unet_big.knobs["allocator"].choices == ("system", "jemalloc", "tcmalloc")
    with pytest.raises(SpaceError, match="jemalloc was not found"):
        unet_small.parse_assignments(["allocator=jemalloc"])
    assert unet_big.parse_assignments(["allocator=jemalloc"]) == {"allocator": "jemalloc"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True), ("True", True), ("1", True), ("yes", True), ("on", True), (" ON ", True),
        ("false", False), ("FALSE", False), ("0", False), ("no", False), ("off", False),
    ],
)
def test_bool_spellings(unet_big: SearchSpace, text: str, expected: bool) -> None:
    assert unet_big.knob("xla").parse(text) is expected


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("intra_threads=0", 0),
        ("intra_threads=112", 112),
        ("intra_threads= 5 ", 5),
        ("batch=4", 4),
        ("data_format=channels_last", "channels_last"),
        ("kmp_blocktime=200", "200"),
        ("patch=64", "64"),
        ("patch=64,64,64", "64"),
        ("patch= 64, 64, 32", "64,64,32"),
        ("patch=80", "80"),
    ],
)
def test_parse_typed_values(unet_big: SearchSpace, item: str, expected: object) -> None:
    name = item.partition("=")[0]
    value = unet_big.parse_assignments([item])[name]
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("xla=maybe", "not a boolean"),
        ("intra_threads=113", "outside 0..112"),
        ("intra_threads=-1", "outside 0..112"),
        ("intra_threads=1.5", "not an integer"),
        ("intra_threads=", "not an integer"),
        ("batch=3", "not one of 1, 2, 4"),
        ("data_format=NHWC", "not one of channels_first, channels_last"),
        ("patch=64,64", "shape"),
        ("patch=0", "shape"),
        ("patch=-8", "shape"),
        ("patch=a,b,c", "shape"),
        ("patch=", "shape"),
        ("threads=4", "unknown knob"),
        ("intra_threads", "KNOB=VALUE"),
        ("=4", "KNOB=VALUE"),
    ],
)
def test_parse_rejects_bad_values(unet_big: SearchSpace, item: str, message: str) -> None:
    with pytest.raises(SpaceError, match=message) as raised:
        unet_big.parse_assignments([item])
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (64, "64"), ("64", "64"), ("64,64,64", "64"), ("64,64,32", "64,64,32"),
        (" 32 , 48 , 64 ", "32,48,64"),
    ],
)
def test_canonical_shape(value: object, expected: str) -> None:
    assert canonical_shape("patch", value) == expected
    assert len(shape_tuple(expected)) == 3


@pytest.mark.parametrize("value", ["64,64", "1,2,3,4", "0", "64,0,64", "x", True, 64.0, ""])
def test_canonical_shape_rejects(value: object) -> None:
    with pytest.raises(SpaceError, match="patch"):
        canonical_shape("patch", value)


def test_shape_tuple() -> None:
    assert shape_tuple("64") == (64, 64, 64)
    assert shape_tuple("64,64,32") == (64, 64, 32)


def test_transpose_elimination_only_matters_for_channels_first(unet_big: SearchSpace) -> None:
    knob = unet_big.knobs["transpose_elimination"]
    assert knob.active({"data_format": "channels_first"})
    assert not knob.active({"data_format": "channels_last"})
    per_layer = unet_big.knobs["per_layer_transpose"]
    assert per_layer.active({"data_format": "channels_first", "transpose_elimination": False})
    assert not per_layer.active({"data_format": "channels_first", "transpose_elimination": True})


def test_fingerprint_collapses_inactive_knobs(unet_big: SearchSpace) -> None:
    last = unet_big.reference("vendor_recommended")
    last_with_noise = unet_big.configure(
        {"transpose_elimination": True, "per_layer_transpose": True, "pin_cores": 9}, base=last
    )
    assert unet_big.fingerprint_config(last) == unet_big.fingerprint_config(last_with_noise)
    first = unet_big.configure({"data_format": "channels_first"}, base=last)
    first_eliminated = unet_big.configure({"transpose_elimination": True}, base=first)
    assert unet_big.fingerprint_config(first) != unet_big.fingerprint_config(first_eliminated)
    pinned = unet_big.configure({"affinity": "cores", "pin_cores": 4}, base=last)
    pinned_more = unet_big.configure({"pin_cores": 8}, base=pinned)
    assert unet_big.fingerprint_config(pinned) != unet_big.fingerprint_config(pinned_more)


def test_fingerprint_judges_nested_conditions_on_effective_values(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "[baseline]",
        """[knobs.fused]
type = "bool"
default = false
target = "param"
when = { mode = ["train"] }

[knobs.fuse_depth]
type = "int"
low = 1
high = 4
default = 1
target = "param"
when = { fused = [true] }

[baseline]""",
    )
    space = load_space(write_space(tmp_path, text), SMALL_HOST)
    plain = space.configure({"mode": "infer"})
    stale = space.configure({"mode": "infer", "fused": True, "fuse_depth": 3})
    assert space.fingerprint_config(plain) == space.fingerprint_config(stale)


def run_suggest(
    space: SearchSpace, trials: int, pins: dict[str, object] | None = None
) -> list[tuple[dict[str, object], dict[str, object]]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(trials):
        trial = study.ask()
        config = space.suggest(trial, pins)
        seen.append((config, dict(trial.params)))
        study.tell(trial, 1.0)
    return seen


def test_suggest_gives_complete_valid_configs(unet_big: SearchSpace) -> None:
    searchable = {n for n, k in unet_big.knobs.items() if k.searchable()}
    formats = set()
    for config, params in run_suggest(unet_big, 40):
        assert set(config) == set(unet_big.knobs)
        assert unet_big.configure(config) == config
        assert set(params) <= searchable
        for name in params:
            assert unet_big.knobs[name].active(config)
        if config["data_format"] == "channels_last":
            assert "transpose_elimination" not in params
        if config["affinity"] != "cores":
            assert "pin_cores" not in params
        formats.add(config["data_format"])
    assert formats == {"channels_first", "channels_last"}


def test_suggest_never_varies_unsearched_knobs(unet_big: SearchSpace) -> None:
    for config, params in run_suggest(unet_big, 20):
        for name in ("mode", "steps", "warmup", "omp_num_threads", "kmp_blocktime", "seed"):
            assert name not in params
            assert config[name] == unet_big.knobs[name].default


def test_suggest_only_offers_choices_this_host_has(unet_small: SearchSpace) -> None:
    for config, params in run_suggest(unet_small, 20):
        assert config["precision"] == "float32"
        assert config["allocator"] == "system"
        assert "allocator" not in params
        assert "precision" not in params
        assert config["intra_threads"] <= 8


def test_suggest_honours_pins(unet_big: SearchSpace) -> None:
    pins = unet_big.parse_assignments(["data_format=channels_last", "batch=2", "mode=train"])
    for config, params in run_suggest(unet_big, 15, pins):
        assert config["data_format"] == "channels_last"
        assert config["batch"] == 2
        assert config["mode"] == "train"
        assert not {"data_format", "batch", "transpose_elimination"} & set(params)
    assert "batch" not in unet_big.searched(pins)
    assert "batch" in unet_big.searched()


def test_fake_space_loads(this_host: HostFacts) -> None:
    space = load_space(FAKE, this_host)
    assert space.workload == "fake"
    assert space.reference("baseline")["onednn"] is False
    assert space.reference("vendor_recommended")["onednn"] is True


def test_space_error_is_a_user_error() -> None:
    assert issubclass(SpaceError, UserError)


def edit(old: str, new: str) -> str:
    assert old in MINIMAL
    return MINIMAL.replace(old, new, 1)


def add(text: str) -> str:
    return MINIMAL + text


ALL_CHOICES_DROPPED = """
[knobs.alloc]
type = "categorical"
choices = ["jemalloc", "tcmalloc"]
default = "jemalloc"
target = "allocator"
"""

BAD_SPACES = [
    ("missing_file", None, "search-space file not found"),
    ("not_toml", "x = [\n", "not valid TOML"),
    ("missing_workload", edit('[workload]\nname = "mini"\nmodule = "workloads.fake"\n'
                              'objective = { name = "voxels_per_s", unit = "voxels/s" }\n', ""),
     "[workload]"),
    ("workload_not_table", edit('[workload]\nname = "mini"\nmodule = "workloads.fake"\n'
                                'objective = { name = "voxels_per_s", unit = "voxels/s" }\n',
                                'workload = "mini"\n'), "[workload]"),
    ("module_path", edit('"workloads.fake"', '"workloads/fake"'), "workload.module"),
    ("module_empty_part", edit('"workloads.fake"', '"workloads..fake"'), "workload.module"),
    ("module_missing", edit('module = "workloads.fake"', ""), "workload.module"),
    ("name_path", edit('name = "mini"', 'name = "../mini"'), "workload.name"),
    ("workload_unknown_key", edit('name = "mini"', 'name = "mini"\nversion = 2'), "'version'"),
    ("unknown_top_level", add("\n[extras]\nx = 1\n"), "'extras'"),
    ("knobs_renamed", MINIMAL.replace("[knobs.", "[knobz."), "'knobz'"),
    ("no_knobs", MINIMAL.split("[knobs.mode]")[0] + "[knobs]\n[baseline]\n[vendor_recommended]\n",
     "knobs: no knobs"),
    ("missing_baseline", edit("[baseline]\nonednn = false\n", ""), "[baseline]"),
    ("knob_not_table", add("\n[knobs]\nflag = 3\n"), "knobs.flag"),
    ("unknown_knob_key", edit('target = "param"', 'target = "param"\ncolour = "red"'),
     "knobs.mode: unknown key 'colour'"),
    ("bad_type", edit('type = "int"', 'type = "integer"'), "knobs.threads.type"),
    ("bad_target", edit('target = "param"', 'target = "gpu"'), "knobs.mode.target"),
    ("env_without_env", edit('env = "TF_ENABLE_ONEDNN_OPTS"\n', ""), "knobs.onednn.env"),
    ("env_not_a_name", edit('"TF_ENABLE_ONEDNN_OPTS"', '"TF ENABLE"'), "knobs.onednn.env"),
    ("env_values_not_text", edit('env = "TF_ENABLE_ONEDNN_OPTS"',
                                 'env = "TF_ENABLE_ONEDNN_OPTS"\nenv_values = { true = 1 }'),
     "knobs.onednn.env_values"),
    ("missing_default", edit('default = "infer"\n', ""), "knobs.mode.default"),
    ("default_above_high", edit("default = 0", "default = 99"), "knobs.threads.default"),
    ("default_not_a_choice", edit('default = "infer"', 'default = "serve"'), "knobs.mode.default"),
    ("default_wrong_type", edit("default = true", 'default = "yes"'), "knobs.onednn.default"),
    ("low_above_high", edit("low = 0", "low = 9"), "knobs.threads: low 9 is above high 8"),
    ("unknown_host_fact", edit('high = "logical_cpus"', 'high = "cores"'), "knobs.threads.high"),
    ("missing_bound", edit("low = 0\n", ""), "knobs.threads.low"),
    ("int_with_float_bound", edit('high = "logical_cpus"', "high = 7.5"),
     "knobs.threads: an int knob needs integer"),
    ("log_from_zero", edit("low = 0", "low = 0\nlog = true"), "knobs.threads.log"),
    ("search_not_bool", edit("low = 0", 'low = 0\nsearch = "no"'), "knobs.threads.search"),
    ("categorical_without_choices", edit('choices = ["infer", "train"]\n', ""),
     "knobs.mode.choices"),
    ("categorical_empty_choices", edit('["infer", "train"]', "[]"), "knobs.mode.choices"),
    ("choice_not_scalar", edit('["infer", "train"]', '["infer", { a = 1 }]'),
     "knobs.mode.choices"),
    ("shape_bad_choice", add('\n[knobs.patch]\ntype = "shape"\nchoices = ["64", "64,64"]\n'
                             'default = "64"\ntarget = "param"\n'), "knobs.patch"),
    ("requires_non_choice", edit('target = "param"', 'target = "param"\n'
                                 'requires = { serve = "avx512_bf16" }'), "knobs.mode.requires"),
    ("requires_not_flag", edit('target = "param"', 'target = "param"\nrequires = { train = 1 }'),
     "knobs.mode.requires"),
    ("when_later_knob", edit('target = "param"', 'target = "param"\nwhen = { threads = [0] }'),
     "knobs.mode.when: 'threads'"),
    ("when_unknown_knob", edit('high = "logical_cpus"',
                               'high = "logical_cpus"\nwhen = { nope = [1] }'),
     "knobs.threads.when: 'nope'"),
    ("when_value_not_list", edit('high = "logical_cpus"',
                                 'high = "logical_cpus"\nwhen = { mode = "train" }'),
     "knobs.threads.when.mode"),
    ("when_empty_list", edit('high = "logical_cpus"',
                             'high = "logical_cpus"\nwhen = { mode = [] }'),
     "knobs.threads.when.mode"),
    ("when_value_not_a_choice", edit('high = "logical_cpus"',
                                     'high = "logical_cpus"\nwhen = { mode = ["trian"] }'),
     "knobs.threads.when.mode"),
    ("baseline_unknown_knob", edit("onednn = false", "onednn = false\nnope = 1"),
     "baseline.nope"),
    ("baseline_out_of_range", edit("onednn = false", "onednn = false\nthreads = 99"),
     "baseline.threads"),
    ("baseline_wrong_type", edit("onednn = false", 'onednn = "off"'), "baseline.onednn"),
    ("vendor_unknown_fact", edit('threads = "physical_cores"', 'threads = "cores"'),
     "vendor_recommended.threads"),
    ("all_choices_dropped", add(ALL_CHOICES_DROPPED), "knobs.alloc.choices"),
]


@pytest.mark.parametrize(
    ("text", "key"), [c[1:] for c in BAD_SPACES], ids=[c[0] for c in BAD_SPACES]
)
def test_bad_space_file(tmp_path: Path, text: str | None, key: str) -> None:
    path = tmp_path / "absent.toml" if text is None else write_space(tmp_path, text)
    with pytest.raises(SpaceError) as raised:
        load_space(path, SMALL_HOST)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert key in message


def test_minimal_space_is_valid(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, MINIMAL), SMALL_HOST)
    assert space.reference("vendor_recommended")["threads"] == 4


def test_space_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SpaceError, match="cannot read"):
        load_space(path, SMALL_HOST)


def test_space_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="cannot read"):
        load_space(tmp_path, SMALL_HOST)


def test_env_values(unet_big: SearchSpace, tmp_path: Path) -> None:
    knobs = unet_big.knobs
    assert (knobs["onednn"].env_value(True), knobs["onednn"].env_value(False)) == ("1", "0")
    assert knobs["omp_num_threads"].env_value(0) is None
    assert knobs["omp_num_threads"].env_value(28) == "28"
    assert knobs["kmp_blocktime"].env_value("default") is None
    assert knobs["kmp_affinity"].env_value("granularity=fine,scatter") == "granularity=fine,scatter"
    text = MINIMAL + (
        '\n[knobs.policy]\ntype = "categorical"\nchoices = ["Fast", "Exact"]\ndefault = "Fast"\n'
        'target = "env"\nenv = "POLICY"\nenv_values = { Fast = "f" }\n'
    )
    policy = load_space(write_space(tmp_path, text), SMALL_HOST).knobs["policy"]
    assert (policy.env_value("Fast"), policy.env_value("Exact")) == ("f", "Exact")
