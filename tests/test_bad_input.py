"""Bad input, end to end: every case is one line on stderr, exit status 2, no traceback, and no change
to the stored study it points at; plus the security checks (no code evaluated, passwords kept out).

One fake study is run once for the module (``autotune run`` in a subprocess, SQLite); every case then
runs ``python -m autotune`` against that storage and study (or the study's ``best.json``), and the
study is compared before and after: studies in the storage, the study's attributes, and every trial's
state, params, values and attributes.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import optuna
import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "data" / "fake.toml"
FAKE_TEXT = FAKE.read_text()
STUDY = "bad-input"
SECRET = "s3cret-pw-7f1c"
# The real U-Net at its smallest, for the --data-dir cases (each one imports TensorFlow: seconds).
TINY = ("--set", "patch=16", "--set", "base_filters=4", "--set", "depth=3", "--set", "image_size=32",
        "--set", "steps=1", "--set", "warmup=0", "--trial-timeout", "120")
BRATS_SHAPE = (48, 48, 32)
# A valid `run` of the module's study: each case adds the one thing that is wrong.
RUN = ("run", "--workload", "fake", "--space", str(FAKE), "--storage", "{url}", "--study", STUDY,
       "--trials", "1", "--confirm-repeats", "0", "--no-profile", "--report-dir", "{tmp}/report",
       "--trial-timeout", "10", "--memory-cap", "300", "--set", "step_seconds=0.003")
EXEC = ("exec", "--config", "{tmp}/best.json", "--", sys.executable, "-c", "pass")
EXPORT = ("export", "--best-json", "{tmp}/best.json", "--format", "sh")
REPORT = ("report", "--study", STUDY, "--workload", "fake", "--space", str(FAKE), "--report-dir", "{tmp}/report")

# Instance knobs added to the fake space (before intra_threads, which they bound).
INSTANCES = (REPO / "tests" / "data" / "fake_instances.toml").read_text() + "[knobs.intra_threads]\n"
CORES = len({tuple(Path(f"/sys/devices/system/cpu/cpu{c}/topology/{n}").read_text().strip() for n in
                   ("physical_package_id", "core_id")) for c in os.sched_getaffinity(0)})

optuna.logging.set_verbosity(optuna.logging.WARNING)


def autotune(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autotune", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def clean_env(lock_dir: Path) -> dict[str, str]:
    """This environment without tuning variables, with a private lock dir (no waiting on real runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KMP_", "OMP_"))}
    env.update(AUTOTUNE_LOCK_DIR=str(lock_dir), COLUMNS="200")
    return env


@dataclass
class World:
    """The module's stored study and the files the cases start from."""

    root: Path
    url: str
    best: dict[str, Any]
    brats: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad-input")
    env = clean_env(root / "locks")
    url = f"sqlite:///{root / 'study.db'}"
    args = [a.format(url=url, tmp=root) for a in RUN]
    done = autotune([*args, "--trials", "2"], root, env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    best = json.loads((root / "report" / "best.json").read_text())
    return World(root=root, url=url, best=best, brats=_brats(root / "brats"), env=env)


def _brats(root: Path) -> Path:
    """A tiny BraTS case, and broken copies of it: one folder per way of being wrong."""
    from workloads.unet3d.data import generate_synthetic_brats

    generate_synthetic_brats(root / "good", n_cases=1, shape=BRATS_SHAPE)

    def variant(name: str, key: str) -> Path:
        shutil.copytree(root / "good", root / name)
        return next((root / name).glob(f"*/*_{key}.nii.gz"))

    variant("missing_modality", "t1ce").unlink()
    flair = variant("truncated_gzip", "flair")
    flair.write_bytes(flair.read_bytes()[: flair.stat().st_size // 2])
    nib.save(nib.Nifti1Image(np.ones((40, 48, 32), np.int16), np.eye(4)), variant("wrong_shape", "t2"))
    t1 = variant("wrong_dtype", "t1")  # complex voxels: no MRI intensity is complex
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(t1).dataobj).astype(np.complex64), np.eye(4)), t1)
    variant("not_nifti", "t2").write_bytes(gzip.compress(b"this is not a NIfTI image\n" * 64))
    return root


def snapshot(url: str) -> dict[str, Any]:
    """Everything a bad command could change in the storage."""
    studies = sorted(optuna.get_all_study_names(url))
    study = optuna.load_study(study_name=STUDY, storage=url)
    trials = [(t.number, t.state.name, t.params, t.values, t.user_attrs, t.system_attrs)
              for t in study.get_trials(deepcopy=False)]
    system = study._storage.get_study_system_attrs(study._study_id)
    return {"studies": studies, "attrs": study.user_attrs, "system": system, "trials": trials}


# ---- what the cases write before they run ----


def space(old: str, new: str) -> Callable[[World, Path], None]:
    """Write ``{tmp}/space.toml``: tests/data/fake.toml with ``old`` replaced by ``new``."""

    def write(_: World, tmp: Path) -> None:
        assert old in FAKE_TEXT, f"tests/data/fake.toml no longer holds {old!r}"
        (tmp / "space.toml").write_text(FAKE_TEXT.replace(old, new, 1))

    return write


def raw(name: str, content: bytes) -> Callable[[World, Path], None]:
    def write(_: World, tmp: Path) -> None:
        (tmp / name).write_bytes(content)

    return write


def best(edit: Callable[[dict[str, Any]], Any]) -> Callable[[World, Path], None]:
    """Write ``{tmp}/best.json``: the study's best.json after ``edit``."""

    def write(world: World, tmp: Path) -> None:
        document = json.loads(json.dumps(world.best))
        edit(document)
        (tmp / "best.json").write_text(json.dumps(document, indent=2))  # NaN stays NaN, as a hand edit may

    return write


def export_record(world: World, tmp: Path) -> None:
    """Write ``{tmp}/best.json`` as `autotune export --format json` would: the best configuration only."""
    entry = world.best["best"]
    record = {"schema": 1, "kind": "autotune-export", "study": STUDY, "workload": "fake", "role": "best",
              "trial": entry["trial"], "env": entry["env"], "cpus": None, "params": entry["params"]}
    (tmp / "best.json").write_text(json.dumps(record))


def blocker(_: World, tmp: Path) -> None:
    (tmp / "report").write_text("a file where the report folder should be\n")


def put(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


@dataclass(frozen=True)
class Case:
    """One bad input: the arguments (``{url}``, ``{tmp}``, ``{brats}`` filled in), what the message must
    name, what it must not show, and the files to write first."""

    args: tuple[str, ...]
    message: str
    setup: Callable[[World, Path], None] | None = None
    absent: tuple[str, ...] = ()
    timeout: float = 60


def case(id_: str, args: tuple[str, ...], message: str, **kwargs: Any) -> Any:
    return pytest.param(Case(args, message, **kwargs), id=id_)


PG_DOWN = f"postgresql://tuner:{SECRET}@127.0.0.1:1/autotune"
CASES = [
    # -- the command line --
    case("cli_unknown_option", (*RUN, "--frob"), "unrecognized arguments: --frob"),
    case("cli_trials_negative", (*RUN, "--trials", "-3"), "-3 is not a positive integer"),
    case("cli_confirm_repeats_negative", (*RUN, "--confirm-repeats", "-1"),
         "argument --confirm-repeats: -1 is negative"),
    case("cli_confirm_select_rounds_text", (*RUN, "--confirm-select-rounds", "one"),
         "argument --confirm-select-rounds: 'one' is not an integer"),
    case("cli_memory_cap_text", (*RUN, "--memory-cap", "lots"), "'lots' is not a number"),
    case("cli_trial_timeout_nan", (*RUN, "--trial-timeout", "nan"), "nan is not a positive number"),
    case("cli_seed_text", (*RUN, "--seed", "x"), "argument --seed: invalid int value: 'x'"),
    case("cli_mode_unknown", (*RUN, "--mode", "serve"), "argument --mode: invalid choice: 'serve'"),
    case("cli_mode_contradicts_set", (*RUN, "--set", "mode=infer", "--mode", "train"),
         "mode: pinned twice, to 'infer' and 'train'"),
    case("cli_report_dir_is_a_file", RUN, "is not a directory", setup=blocker),
    case("cli_dashboard_port", ("dashboard", "--storage", "{url}", "--port", "99999"),
         "99999 is not a port number"),
    case("cli_report_unknown_study", (*REPORT, "--storage", "{url}", "--study", "nosuch"), "no study 'nosuch'"),
    # -- search-space files --
    case("space_not_toml", (*RUN, "--space", "{tmp}/space.toml"), "not valid TOML",
         setup=space("[knobs.batch]", "[knobs.batch")),
    case("space_not_text", (*RUN, "--space", "{tmp}/space.toml"), "cannot read",
         setup=raw("space.toml", b"\xff\xfe\x00\x01 binary")),
    case("space_no_workload_table", (*RUN, "--space", "{tmp}/space.toml"), "[workload]: missing table",
         setup=space('[workload]\nname = "fake"\nmodule = "workloads.fake"\nlabel = ["mode"]\n'
                     'objective = { name = "voxels_per_s", unit = "voxels/s", direction = "maximize" }\n', "")),
    case("space_module_shell_syntax", (*RUN, "--space", "{tmp}/space.toml"),
         "workload.module: 'workloads.fake; rm -rf ~' is not a dotted Python module name",
         setup=space('module = "workloads.fake"', 'module = "workloads.fake; rm -rf ~"')),
    case("space_bound_is_code", (*RUN, "--space", "{tmp}/space.toml"),
         "knobs.intra_threads.high: \"__import__('os').cpu_count()\" is not a number or one of",
         setup=space('high = "logical_cpus"', "high = \"__import__('os').cpu_count()\"")),
    case("space_unknown_type", (*RUN, "--space", "{tmp}/space.toml"), "knobs.mode.type: 'complex' is not one of",
         setup=space('type = "categorical"', 'type = "complex"')),
    case("space_low_above_high", (*RUN, "--space", "{tmp}/space.toml"), "low 200 is above high 100",
         setup=space("low = 0\nhigh = 100", "low = 200\nhigh = 100")),
    case("space_default_not_a_choice", (*RUN, "--space", "{tmp}/space.toml"), "knobs.batch.default",
         setup=space("choices = [1, 2]\ndefault = 1", "choices = [1, 2]\ndefault = 3")),
    case("space_empty_choices", (*RUN, "--space", "{tmp}/space.toml"), "knobs.batch.choices: needs a non-empty list",
         setup=space("choices = [1, 2]", "choices = []")),
    case("space_baseline_unknown_knob", (*RUN, "--space", "{tmp}/space.toml"), "baseline.nope: unknown knob",
         setup=space("[baseline]\n", "[baseline]\nnope = 1\n")),
    case("space_grid_over_a_float", (*RUN, "--sampler", "grid", "--space", "{tmp}/space.toml"),
         "--sampler grid cannot enumerate the float knob 'noise'",
         setup=space('default = 0.0\ntarget = "param"\nsearch = false', 'default = 0.0\ntarget = "param"')),
    # -- --set values --
    case("set_shell_syntax", (*RUN, "--set", "batch=1; rm -rf ~"), "batch: '1; rm -rf ~' is not one of 1, 2"),
    case("set_code", (*RUN, "--set", "fault=__import__('os').system('id')"),
         "fault: \"__import__('os').system('id')\" is not one of"),
    case("set_nan", (*RUN, "--set", "step_seconds=nan"), "step_seconds: nan is outside 0..10"),
    case("set_float_for_int", (*RUN, "--set", "steps=1.5"), "steps: '1.5' is not an integer"),
    case("set_empty_value", (*RUN, "--set", "onednn="), "onednn: '' is not a boolean"),
    case("set_other_pins_than_the_study", (*RUN, "--set", "batch=2"),
         f"study '{STUDY}' was started with --set step_seconds=0.003"),
    # -- instances (the fake space with an instances knob) --
    case("instances_more_than_cores", (*RUN, "--space", "{tmp}/space.toml", "--set", f"instances={CORES + 1}"),
         f"instances: {CORES + 1} is outside 1..{CORES}", setup=space("[knobs.intra_threads]\n", INSTANCES)),
    case("instances_layout_too_big", (*RUN, "--space", "{tmp}/space.toml", "--set", "instances=2",
                                      "--set", f"cores_per_instance={CORES}"),
         f"instances: 2 x {CORES} cores needs {2 * CORES} physical cores", setup=space("[knobs.intra_threads]\n",
                                                                                       INSTANCES)),
    case("instances_oversubscribed", (*RUN, "--space", "{tmp}/space.toml", "--set", "instances=2",
                                      "--set", "cores_per_instance=1", "--set", "intra_threads=2"),
         "intra_threads: 2 threads in an instance of 1 core (2 instances)",
         setup=space("[knobs.intra_threads]\n", INSTANCES + "threads = true\n")),
    case("max_latency_without_a_latency_figure", (*RUN, "--max-latency", "0.5"),
         "--max-latency: workload 'fake' declares no latency figure"),
    case("best_instances_on_unusable_cpus", EXEC, "best.cpus: CPU(s) 4095 are not usable here",
         setup=best(put(("best", "instances"), {"instances": 2, "cores_per_instance": 1, "cpus": [[0], [4095]],
                                                 "membind": [[], []]}))),
    case("best_instances_sharing_a_cpu", EXEC, "best.instances: instances: two instances share a CPU",
         setup=best(put(("best", "instances"), {"instances": 2, "cores_per_instance": 1, "cpus": [[0], [0]]}))),
    case("run_warm_start_unknown_study", (*RUN, "--warm-start", "nosuch"),
         "--warm-start nosuch: no such study in this storage (earlier studies of workload fake: none)"),
    # -- storage URLs --
    case("storage_unknown_scheme", (*RUN, "--storage", "nosuchdb://x"),
         "cannot open storage nosuchdb://x: Can't load plugin"),
    case("storage_postgres_unreachable", (*RUN, "--storage", PG_DOWN),
         "cannot open storage postgresql://tuner:***@127.0.0.1:1/autotune:", absent=(SECRET,)),
    case("storage_sqlite_folder_missing", (*REPORT, "--storage", "sqlite:////nonexistent/dir/x.db"),
         "no study storage at /nonexistent/dir/x.db: run `autotune run` first, or give --storage"),
    case("storage_sqlite_folder_missing_for_run", (*RUN, "--storage", "sqlite:////nonexistent/dir/x.db"),
         "cannot open storage sqlite:////nonexistent/dir/x.db: (sqlite3.OperationalError) unable to open"),
    case("storage_without_scheme", (*REPORT, "--storage", f"tuner:{SECRET}@db.example/autotune"),
         "cannot open storage tuner:***@db.example/autotune: Could not parse", absent=(SECRET,)),
    # -- data directories (the real U-Net, tiny) --
    case("data_missing_modality", ("bench", "--data-dir", "{brats}/missing_modality", *TINY),
         "_t1ce.nii.gz: missing t1ce modality file", timeout=180),
    case("data_truncated_gzip", ("bench", "--data-dir", "{brats}/truncated_gzip", *TINY),
         "_flair.nii.gz: corrupt or truncated voxel data", timeout=180),
    case("data_wrong_shape", ("bench", "--data-dir", "{brats}/wrong_shape", *TINY),
         "_t2.nii.gz: shape (40, 48, 32) differs from (48, 48, 32)", timeout=180),
    case("data_wrong_dtype", ("bench", "--data-dir", "{brats}/wrong_dtype", *TINY),
         "_t1.nii.gz: unsupported voxel type complex64", timeout=180),
    case("data_not_nifti", ("bench", "--data-dir", "{brats}/not_nifti", *TINY),
         "_t2.nii.gz: not a readable NIfTI file", timeout=180),
    # -- bad input only the workload can judge: its check runs before any trial is stored --
    case("set_value_the_workload_refuses", (*RUN, "--set", "fault=bad_input"),
         "autotune: error: the fake workload was told its input is bad"),
    case("set_patch_the_network_cannot_take", ("run", "--workload", "unet3d", "--storage", "{url}", "--study",
                                               "unet3d-bad", "--trials", "1", "--set", "patch=33"),
         "autotune: error: patch 33 must be a multiple of 16 per side at depth 5"),
    case("data_garbage_before_the_study", ("run", "--workload", "unet3d", "--storage", "{url}", "--study",
                                           "unet3d-bad", "--trials", "1", "--data-dir", "{brats}/not_nifti", *TINY),
         "_t2.nii.gz: not a readable NIfTI file"),
    case("data_truncated_before_the_study", ("run", "--workload", "unet3d", "--storage", "{url}", "--study",
                                             "unet3d-bad", "--trials", "1", "--data-dir", "{brats}/truncated_gzip",
                                             *TINY),
         "_flair.nii.gz: corrupt or truncated voxel data"),
    # -- best.json, edited by hand, given to exec and export --
    case("best_not_json", EXEC, "best.json: not valid JSON", setup=raw("best.json", b'{"kind": "autotune-best",')),
    case("best_other_document", EXEC, "not an autotune best.json", setup=raw("best.json", b'{"kind": "x"}')),
    case("best_future_schema", EXEC, "schema 999, this autotune reads", setup=best(put(("schema",), 999))),
    case("best_without_best", EXEC, "has no 'best' configuration", setup=best(put(("best",), None))),
    case("best_env_name_injection", EXEC, "'X;touch /tmp/pwned' is not a valid variable name",
         setup=best(put(("best", "env", "X;touch /tmp/pwned"), "1"))),
    case("best_env_value_number", EXEC, "best.env.OMP_NUM_THREADS: 4 is neither a string nor null",
         setup=best(put(("best", "env", "OMP_NUM_THREADS"), 4))),
    case("best_env_reserved", EXPORT, "AUTOTUNE_PARAMS is reserved",
         setup=best(put(("best", "env", "AUTOTUNE_PARAMS"), "{}"))),
    case("best_env_nul", EXPORT, "cannot hold a NUL character",
         setup=best(put(("best", "env", "KMP_BLOCKTIME"), "1\0"))),
    case("best_cpus_not_here", EXEC, "best.cpus: CPU(s) 4095 are not usable here",
         setup=best(put(("best", "cpus"), [4095]))),
    case("best_cpus_negative", EXPORT, "best.cpus: -1 is not a CPU number", setup=best(put(("best", "cpus"), [-1]))),
    case("best_preload_missing", EXEC, "LD_PRELOAD: /nonexistent/libjemalloc.so.2 does not exist on this host",
         setup=best(put(("best", "env", "LD_PRELOAD"), "/nonexistent/libjemalloc.so.2"))),
    case("best_param_list", EXPORT, "best.params.batch: [1, 2] is not a single value",
         setup=best(put(("best", "params", "batch"), [1, 2]))),
    case("best_param_nan", EXPORT, "best.params.noise: nan is not a finite number",
         setup=best(put(("best", "params", "noise"), float("nan")))),
    case("best_trial_text", EXPORT, "best.trial: '1; rm -rf ~' is not a trial number",
         setup=best(put(("best", "trial"), "1; rm -rf ~"))),
    case("best_study_not_text", EXPORT, "study: 5 is not a string", setup=best(put(("study",), 5))),
    case("export_other_study", ("export", "--study", "other", "--best-json", "{tmp}/best.json", "--format", "sh"),
         f"holds study '{STUDY}', not 'other'", setup=best(lambda d: None)),
    case("export_file_missing", ("export", "--best-json", "{tmp}/nope.json", "--format", "k8s"),
         "nope.json: file not found"),
    case("exec_record_of_another_role", (*EXEC[:3], "--role", "baseline", *EXEC[3:]),
         "holds the 'best' configuration, not 'baseline'", setup=export_record),
    case("exec_without_separator", ("exec", "--config", "{tmp}/best.json", "true"), "put the command after --",
         setup=best(lambda d: None)),
]


def test_the_table_is_broad() -> None:
    kinds = {p.id.split("_")[0] for p in CASES}
    assert len(CASES) >= 30
    assert {"cli", "space", "set", "storage", "data", "best"} <= kinds


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(bad: Case, world: World, tmp_path: Path) -> None:
    if bad.setup is not None:
        bad.setup(world, tmp_path)
    args = [a.format(url=world.url, tmp=tmp_path, brats=world.brats) for a in bad.args]
    before = snapshot(world.url)

    done = autotune(args, tmp_path, world.env, timeout=bad.timeout)

    lines = done.stderr.splitlines()
    shown = f"exit {done.returncode}\nstdout: {done.stdout[-1500:]}\nstderr: {done.stderr[-1500:]}"
    assert done.returncode == 2, shown
    assert len(lines) == 1 and lines[0].strip(), shown
    assert lines[0].startswith("autotune: "), shown
    assert bad.message in lines[0], shown
    assert "Traceback" not in done.stdout + done.stderr
    for secret in bad.absent:
        assert secret not in done.stdout + done.stderr
    assert snapshot(world.url) == before
    print(lines[0])


# ---- security ----

# Calls that evaluate text as code or hand it to a shell, and modules that deserialize code.
EVALUATING_BUILTINS = {"eval", "exec", "compile", "__import__"}
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle"}
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}


def _unsafe(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name and name.split(".")[0] in UNSAFE_MODULES:
                    yield node.lineno, f"import {name}"
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in EVALUATING_BUILTINS:
            yield node.lineno, f"{func.id}()"
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if (func.value.id, func.attr) in SHELL_CALLS:
                yield node.lineno, f"{func.value.id}.{func.attr}()"
            if func.value.id == "yaml" and func.attr in ("load", "load_all", "unsafe_load", "full_load"):
                loader = {k.arg: ast.unparse(k.value) for k in node.keywords}.get("Loader", "")
                if "Safe" not in loader:
                    yield node.lineno, f"yaml.{func.attr}() without SafeLoader"
        for keyword in node.keywords:
            off = isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            if keyword.arg == "shell" and not off:
                yield node.lineno, "shell=True"


def test_unsafe_check_finds_what_it_looks_for() -> None:
    sample = ("import pickle\nfrom os import path\neval('1')\nexec('x')\nos.system('x')\n"
              "subprocess.run('x', shell=True)\nyaml.load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
              "os.execvpe(a, b, c)\n")
    assert [line for line, _ in _unsafe(ast.parse(sample))] == [1, 3, 4, 5, 6, 7]


def test_nothing_is_evaluated_as_code_or_run_through_a_shell() -> None:
    found = []
    for package in ("autotune", "workloads"):
        for path in sorted((REPO / package).rglob("*.py")):
            for line, what in _unsafe(ast.parse(path.read_text(), str(path))):
                found.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert found == []


def test_dashboard_listens_on_loopback_unless_told() -> None:
    from autotune.cli import _parser
    from autotune.dashboard import DEFAULT_HOST, bind_warning

    args = _parser().parse_args(["dashboard"])
    assert args.host == DEFAULT_HOST == "127.0.0.1"
    assert bind_warning(args.host) is None
    assert bind_warning("0.0.0.0") is not None


def _postgres_fixtures() -> Any:
    """tests/autotune/conftest.py, loaded as a module: its throw-away PostgreSQL server."""
    path = REPO / "tests" / "autotune" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_autotune_postgres_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    fixtures = _postgres_fixtures()
    try:
        server = fixtures.start_postgres()
    except (fixtures.PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no PostgreSQL server: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        yield server.create_database("security")
    finally:
        server.stop()


def test_postgres_password_appears_in_no_output_file_or_stored_attribute(postgres_url: str, tmp_path: Path) -> None:
    password = postgres_url.split(":")[2].split("@")[0]
    env = clean_env(tmp_path / "locks")
    report = tmp_path / "report"
    run = [a.format(url=postgres_url, tmp=tmp_path) for a in RUN]
    outputs = []
    done = autotune([*run, "--trials", "2"], tmp_path, env)
    assert done.returncode == 0, done.stderr[-2000:]
    outputs.append(done.stdout + done.stderr)
    for fmt in ("sh", "dotenv", "json", "docker", "k8s"):
        exported = autotune(["export", "--study", STUDY, "--report-dir", str(report), "--format", fmt,
                             "--storage", postgres_url], tmp_path, env)
        assert exported.returncode == 0, exported.stderr
        outputs.append(exported.stdout + exported.stderr)
    rebuilt = autotune(["report", "--study", STUDY, "--storage", postgres_url, "--workload", "fake",
                        "--space", str(FAKE), "--report-dir", str(tmp_path / "again")], tmp_path, env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    outputs.append(rebuilt.stdout + rebuilt.stderr)
    for text in outputs:
        assert password not in text
    files = [p for p in (*report.rglob("*"), *(tmp_path / "again").rglob("*")) if p.is_file()]
    assert {"best.json", "report.md", "report.html"} <= {p.name for p in files}
    for path in files:
        assert password.encode() not in path.read_bytes(), path
    study = optuna.load_study(study_name=STUDY, storage=postgres_url)
    system = study._storage.get_study_system_attrs(study._study_id)
    stored = json.dumps([study.user_attrs, system,
                         [(t.user_attrs, t.system_attrs) for t in study.get_trials(deepcopy=False)]], default=str)
    assert password not in stored
