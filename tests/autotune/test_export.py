from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from autotune.errors import UserError
from autotune.export import (
    EXPORT_KIND,
    EXPORT_SCHEMA,
    FORMATS,
    LaunchRecord,
    load_record,
    render,
    write_file,
)
from autotune.protocol import SCHEMA_VERSION
from autotune.summary import BEST_KIND

STUDY = "unet3d-infer-0123abcd"
PARAMS = {
    "data_format": "channels_last",
    "intra_threads": 2,
    "batch": 1,
    "xla": False,
    "patch": "64",
}
# Values a shell, a dotenv reader, Docker or YAML could misread; "{marker}" becomes a file path that
# must never be created.
TRICKY = {
    "SPACES": "a b  c ",
    "SINGLE": "it's 'quoted'",
    "DOUBLE": 'say "hi"',
    "DOLLAR": "$HOME ${PATH} $$ $1 $(touch {marker})",
    "BACKTICK": "`touch {marker}`",
    "BACKSLASH": "a\\b\\\\ \\n \\$ \\",
    "SHELL": "'; touch {marker}; echo '\" && touch {marker} #",
    "EMPTY": "",
    "UNICODE": "grüße € 😀 \u2028 line sep",
    "TAB": "a\tb",
    "KMP_AFFINITY": "granularity=fine,compact,1,0",
}
MULTILINE = {"NEWLINE": "line1\nline2\n$(touch {marker})\n", "CR": "a\rb"}


def entry(
    env: dict[str, str | None], cpus: list[int] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "trial": 7,
        "role": "search",
        "config": {"onednn": True, "data_format": "channels_last"},
        "env": env,
        "params": dict(PARAMS),
        "cpus": cpus,
        "voxels_per_s": 1.0,
        **extra,
    }


def write_best(folder: Path, best: dict[str, Any] | None, **roles: Any) -> Path:
    document = {
        "schema": SCHEMA_VERSION,
        "kind": BEST_KIND,
        "study": STUDY,
        "workload": "unet3d",
        "host_fingerprint": "0123abcd0123abcd",
        "host": {},
        "best": best,
        "baseline": roles.get(
            "baseline", entry({"TF_ENABLE_ONEDNN_OPTS": "0", "LD_PRELOAD": None})
        ),
        "vendor_recommended": roles.get("vendor_recommended"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "best.json"
    path.write_text(json.dumps(document))
    return path


def with_marker(values: dict[str, str], marker: Path) -> dict[str, str]:
    return {name: value.replace("{marker}", str(marker)) for name, value in values.items()}


def record_of(
    tmp_path: Path, env: dict[str, str | None], cpus: list[int] | None = None
) -> LaunchRecord:
    return load_record(write_best(tmp_path / "in", entry(env, cpus)))


def autotune(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autotune", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def environment_after(command: list[str], env: dict[str, str] | None = None) -> dict[str, str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return json.loads(done.stdout)


PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"
SHELLS = [shell for shell in ("bash", "sh") if shutil.which(shell)]


@pytest.mark.parametrize("shell", SHELLS)
def test_sourced_sh_reads_back_every_value_exactly(tmp_path: Path, shell: str) -> None:
    marker = tmp_path / "PWNED"
    values = with_marker({**TRICKY, **MULTILINE}, marker)
    record = record_of(tmp_path, {**values, "AT_GONE": None, "LD_PRELOAD": None})
    script = tmp_path / "best.sh"
    script.write_text(render(record, "sh"))
    parent = {**os.environ, "AT_GONE": "still here", "LD_PRELOAD": ""}

    seen = environment_after(
        [
            shell,
            "-c",
            f'set -e; . "$1"; exec "{sys.executable}" -c "$2"',
            shell,
            str(script),
            PRINT_ENV,
        ],
        parent,
    )

    assert {name: seen.get(name) for name in values} == values
    assert "AT_GONE" not in seen and "LD_PRELOAD" not in seen
    assert json.loads(seen["AUTOTUNE_PARAMS"]) == PARAMS
    assert not marker.exists()


def test_sh_launch_function_pins_the_command(tmp_path: Path) -> None:
    if not shutil.which("taskset"):
        pytest.skip("taskset (util-linux) is not installed")
    cpu = min(os.sched_getaffinity(0))
    script = tmp_path / "best.sh"
    script.write_text(render(record_of(tmp_path, {"A": "1"}, cpus=[cpu]), "sh"))
    probe = "import os; print(sorted(os.sched_getaffinity(0)))"

    done = subprocess.run(
        [
            "bash",
            "-c",
            f'. "$1"; echo "$AUTOTUNE_LAUNCH"; autotune_launch "{sys.executable}" -c "$2"',
            "bash",
            str(script),
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"taskset -c {cpu}", f"[{cpu}]"]
    assert f'autotune_launch() {{ taskset -c {cpu} "$@"; }}' in script.read_text()


def test_sh_without_cpus_launches_unpinned(tmp_path: Path) -> None:
    text = render(record_of(tmp_path, {"A": "1"}), "sh")

    assert "AUTOTUNE_LAUNCH=''" in text.splitlines()
    assert 'autotune_launch() { "$@"; }' in text.splitlines()
    assert "taskset" not in text


def test_sh_states_the_in_process_knobs_as_workload_arguments(tmp_path: Path) -> None:
    lines = render(record_of(tmp_path, {"A": "1"}), "sh").splitlines()

    arguments = next(line for line in lines if line.startswith("# workload arguments: "))
    assert arguments == (
        "# workload arguments: --batch 1 --data_format channels_last --intra_threads 2"
        " --patch 64 --xla false"
    )
    assert (
        "# In-process knobs are not environment variables: the workload must apply them itself."
        in lines
    )


def parse_dotenv(text: str) -> dict[str, str]:
    """The reader's side of the convention: KEY="value", backslash escapes, one line per entry."""
    escapes = {"n": "\n", "r": "\r"}
    values = {}
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        name, _, quoted = line.partition("=")
        assert quoted[0] == quoted[-1] == '"' and len(quoted) >= 2, line
        body, out, i = quoted[1:-1], [], 0
        while i < len(body):
            if body[i] == "\\":
                out.append(escapes.get(body[i + 1], body[i + 1]))
                i += 2
            else:
                assert body[i] != '"', f"unescaped quote in {line!r}"
                out.append(body[i])
                i += 1
        values[name] = "".join(out)
    return values


def test_dotenv_parses_back_exactly(tmp_path: Path) -> None:
    values = with_marker({**TRICKY, **MULTILINE}, tmp_path / "PWNED")
    text = render(record_of(tmp_path, {**values, "AT_GONE": None}), "dotenv")

    parsed = parse_dotenv(text)

    assert parsed == {**values, "AUTOTUNE_PARAMS": json.dumps(PARAMS, sort_keys=True)}
    assert "# AT_GONE must be unset: a dotenv file cannot unset it; left out." in text.splitlines()


def test_dotenv_is_inert_and_exact_when_a_shell_sources_it(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    values = with_marker(TRICKY, marker)
    path = tmp_path / "best.env"
    path.write_text(render(record_of(tmp_path, values), "dotenv"))

    seen = environment_after(
        [
            "bash",
            "-c",
            f'set -ae; . "$1"; exec "{sys.executable}" -c "$2"',
            "bash",
            str(path),
            PRINT_ENV,
        ]
    )

    assert {name: seen.get(name) for name in values} == values
    assert not marker.exists()


def parse_docker_env(line: str) -> tuple[str, str]:
    """A Dockerfile ENV line, read as BuildKit does: in double quotes \\ escapes only " $ \\."""
    assert line.startswith("ENV ")
    name, _, quoted = line[4:].partition("=")
    assert quoted[0] == quoted[-1] == '"' and len(quoted) >= 2, line
    body, out, i = quoted[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        assert ch not in '"$' or (i and body[i - 1] == "\\"), f"unescaped {ch!r} in {line!r}"
        if ch == "\\" and i + 1 < len(body) and body[i + 1] in '"$\\':
            out.append(body[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return name, "".join(out)


def test_docker_env_lines_parse_back(tmp_path: Path) -> None:
    values = with_marker(TRICKY, tmp_path / "PWNED")
    text = render(record_of(tmp_path, {**values, "AT_GONE": None}, cpus=[0, 1]), "docker")
    lines = text.rstrip("\n").split("\n")

    parsed = dict(parse_docker_env(line) for line in lines if line.startswith("ENV "))

    assert parsed == {**values, "AUTOTUNE_PARAMS": json.dumps(PARAMS, sort_keys=True)}
    assert all(line.startswith(("ENV ", "# ")) for line in lines)
    # JSON strings are Dockerfile strings whenever nothing needed Docker's own \$ escape.
    plain = [line for line in lines if line.startswith("ENV ") and "$" not in line]
    assert len(plain) > 5
    for line in plain:
        _, value = parse_docker_env(line)
        assert json.loads(line.partition("=")[2], strict=False) == value
    assert any("--cpuset-cpus=0-1" in line for line in lines)
    assert any("taskset -c 0-1 CMD" in line for line in lines)
    assert "# AT_GONE must be unset: ENV cannot unset it; keep it out of the image." in lines


def test_docker_refuses_a_line_break_in_one_line(tmp_path: Path) -> None:
    record = record_of(tmp_path, {"MULTI": "a\nb"})

    with pytest.raises(
        UserError, match=r"best\.env\.MULTI: a Dockerfile ENV value cannot hold"
    ) as info:
        render(record, "docker")

    assert "\n" not in str(info.value)


def test_k8s_env_block_is_yaml_with_json_strings(tmp_path: Path) -> None:
    values = with_marker(
        {**TRICKY, **MULTILINE, "NO": "yes", "null": "~", "NUM": "0x10"}, tmp_path / "X"
    )
    text = render(record_of(tmp_path, {**values, "AT_GONE": None}, cpus=[0]), "k8s")

    loaded = yaml.safe_load(text)

    expected = {**values, "AUTOTUNE_PARAMS": json.dumps(PARAMS, sort_keys=True)}
    assert list(loaded) == ["env"]
    assert {item["name"]: item["value"] for item in loaded["env"]} == expected
    assert all(set(item) == {"name", "value"} for item in loaded["env"])
    body = text[text.index("\nenv:\n") + 1 :].splitlines()
    assert body[0] == "env:"
    for name_line, value_line in zip(body[1::2], body[2::2], strict=True):
        assert name_line.startswith("  - name: ") and value_line.startswith("    value: ")
        name = json.loads(name_line.removeprefix("  - name: "))
        assert json.loads(value_line.removeprefix("    value: ")) == expected[name]
    assert "AT_GONE" not in {item["name"] for item in loaded["env"]}
    assert any("static CPU manager policy" in line for line in text.splitlines())


def test_json_export_is_versioned_and_loads_back(tmp_path: Path) -> None:
    record = record_of(tmp_path, {"A": "x y", "LD_PRELOAD": None}, cpus=[1, 0])
    path = tmp_path / "export.json"
    path.write_text(render(record, "json"))

    document = json.loads(path.read_text())

    assert document["schema"] == EXPORT_SCHEMA and document["kind"] == EXPORT_KIND
    assert document["role"] == "best" and document["study"] == STUDY and document["trial"] == 7
    assert document["env"] == {"A": "x y", "LD_PRELOAD": None}
    assert document["cpus"] == [0, 1]
    assert document["params"] == PARAMS
    assert document["host_fingerprint"] == "0123abcd0123abcd"
    assert load_record(path) == record
    with pytest.raises(UserError, match="holds the 'best' configuration, not 'baseline'"):
        load_record(path, "baseline")


def test_comments_stay_on_one_line(tmp_path: Path) -> None:
    params = {"note": "x\ny\u2028$(touch z)", "data_format": "channels_last"}
    best = entry({"A": "1"}, cpus=[0], params=params)
    record = load_record(write_best(tmp_path, best))

    for fmt, serializer in FORMATS.items():
        if fmt == "json":
            continue
        for line in serializer(record).splitlines():
            starts = (
                "#",
                "export ",
                "unset ",
                "ENV ",
                "env:",
                "  ",
                "AUTO",
                "A=",
                "autotune_launch() ",
            )
            assert line.startswith(starts), (fmt, line)


@pytest.mark.parametrize(
    ("best", "message"),
    [
        ("[1]", "best: not an object"),
        ({"env": ["A"]}, r"best\.env: not an object"),
        ({"env": {"A B": "1"}}, r"best\.env: 'A B' is not a valid variable name"),
        ({"env": {"1A": "1"}}, r"best\.env: '1A' is not a valid variable name"),
        ({"env": {"A=B": "1"}}, r"best\.env: 'A=B' is not a valid variable name"),
        ({"env": {"A": 1}}, r"best\.env\.A: 1 is neither a string nor null"),
        ({"env": {"A": "a\0b"}}, r"best\.env\.A: a value cannot hold a NUL"),
        ({"env": {"AUTOTUNE_PARAMS": "{}"}}, "reserved"),
        ({"env": {}, "cpus": "0,1"}, r"best\.cpus: '0,1' is not a non-empty list"),
        ({"env": {}, "cpus": []}, r"best\.cpus: \[\] is not a non-empty list"),
        ({"env": {}, "cpus": [0, -1]}, r"best\.cpus: -1 is not a CPU number"),
        ({"env": {}, "cpus": [True]}, r"best\.cpus: True is not a CPU number"),
        (
            {"env": {}, "params": {"batch": [1, 2]}},
            r"best\.params\.batch: \[1, 2\] is not a single value",
        ),
        ({"env": {}, "params": {"a b": 1}}, r"best\.params: 'a b' is not a valid knob name"),
    ],
)
def test_malformed_fields_are_one_line_errors_naming_the_field(
    tmp_path: Path, best: Any, message: str
) -> None:
    path = write_best(
        tmp_path, {"params": {}, "cpus": None, **best} if isinstance(best, dict) else best
    )
    if isinstance(best, str):
        document = json.loads(path.read_text())
        document["best"] = json.loads(best)
        path.write_text(json.dumps(document))

    with pytest.raises(UserError, match=message) as info:
        load_record(path)

    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_a_configuration_without_a_trial_is_an_error(tmp_path: Path) -> None:
    path = write_best(tmp_path, entry({"A": "1"}))

    with pytest.raises(UserError, match="has no 'vendor_recommended' configuration"):
        load_record(path, "vendor")
    assert load_record(path, "baseline").env == {"TF_ENABLE_ONEDNN_OPTS": "0", "LD_PRELOAD": None}


def test_write_file_is_atomic_and_keeps_permissions(tmp_path: Path) -> None:
    target = tmp_path / "best.sh"

    write_file(target, "one\n")
    os.chmod(target, 0o640)
    write_file(target, "two\n")

    assert target.read_text() == "two\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["best.sh"]
    with pytest.raises(UserError, match="cannot write"):
        write_file(tmp_path / "missing" / "x.sh", "x")


FAKE = Path(__file__).resolve().parents[1] / "data" / "fake.toml"


@pytest.fixture(scope="module")
def stored_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small fake study in SQLite whose report folder was deleted afterwards: only the storage is left."""
    where = tmp_path_factory.mktemp("stored")
    url = f"sqlite:///{where / 'study.db'}"
    done = autotune(["run", "--workload", "fake", "--space", str(FAKE), "--storage", url, "--study", "s",
                     "--trials", "4", "--seed", "1", "--set", "step_seconds=0.002", "--confirm-repeats", "1",
                     "--confirm-top", "1", "--report-dir", str(where / "report")], where,
                    # module-scoped: the per-test private lock folder is not set up yet
                    env={**os.environ, "AUTOTUNE_LOCK_DIR": str(where / "locks")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shutil.rmtree(where / "report")
    return where, url


def test_cli_export_reads_the_study_from_the_storage(stored_study: tuple[Path, str], tmp_path: Path) -> None:
    where, url = stored_study

    done = autotune(["export", "--study", "s", "--storage", url, "--format", "json", "--config", "vendor"], tmp_path)

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["study"] == "s" and document["role"] == "vendor_recommended"
    assert document["env"]["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert not (where / "report").exists() and not (tmp_path / "reports").exists()


def test_cli_exec_runs_the_study_winner_from_the_storage(stored_study: tuple[Path, str], tmp_path: Path) -> None:
    _, url = stored_study
    best = json.loads(autotune(["export", "--study", "s", "--storage", url, "--format", "json"], tmp_path).stdout)

    done = autotune(["exec", "--study", "s", "--storage", url, "--", sys.executable, "-c",
                     "import os; print(os.environ['AUTOTUNE_PARAMS'])"], tmp_path)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == best["params"]


def test_cli_verify_needs_only_the_storage(stored_study: tuple[Path, str], tmp_path: Path) -> None:
    _, url = stored_study

    done = autotune(["verify", "--study", "s", "--storage", url, "--repeats", "1"], tmp_path)

    assert done.returncode in (0, 1), done.stderr
    assert "winner voxels_per_s" in done.stdout and done.stderr == ""


def test_cli_export_writes_the_file(tmp_path: Path) -> None:
    path = write_best(tmp_path / "elsewhere", entry({"A": "it's"}))

    done = autotune(
        ["export", "--best-json", str(path), "--format", "sh", "-o", "out.sh"], tmp_path
    )

    assert done.returncode == 0, done.stderr
    assert "export A='it'\"'\"'s'" in (tmp_path / "out.sh").read_text().splitlines()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--study", "nothing-here", "--format", "sh"],
            "no study storage at autotune.db: run `autotune run` first, or give --storage",
        ),
        (["--format", "sh"], "give --study NAME"),
        (
            ["--study", "other", "--best-json", "best.json", "--format", "sh"],
            f"holds study '{STUDY}', not 'other'",
        ),
        (["--best-json", "best.json", "--format", "docker"], "cannot hold a line break"),
        (
            ["--best-json", "best.json", "--format", "sh", "--config", "vendor"],
            "has no 'vendor_recommended'",
        ),
        (["--best-json", "best.json", "--format", "toml"], "invalid choice"),
    ],
)
def test_cli_export_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    write_best(tmp_path, entry({"A": "a\nb"}))

    done = autotune(["export", *args], tmp_path)

    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr
