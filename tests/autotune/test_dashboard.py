"""``autotune dashboard``: optuna-dashboard serves a study's trials and their user attributes.

The server runs as a real ``autotune dashboard`` subprocess on a free loopback port; the tests read the
study back through optuna-dashboard's own JSON API (``/api/studies``, ``/api/studies/<id>``) and always
stop the server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune.dashboard import bind_warning
from autotune.study import RunOptions, run_study

STUDY = "dash"
PINS = {"step_seconds": 0.003}
START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_study(url: str, tmp_path: Path, host, fake_space) -> None:
    options = RunOptions(trials=3, timeout_s=60, storage=url, study_name=STUDY, report_dir=tmp_path / "report",
                         trial_timeout_s=30, memory_cap_mb=400, confirm_repeats=0)
    assert run_study(options, host, fake_space, PINS) == 0


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


class Dashboard:
    def __init__(self, proc: subprocess.Popen[str], base: str) -> None:
        self.proc = proc
        self.base = base

    def api(self, path: str) -> dict:
        return get_json(self.base + path)


def start_dashboard(storage: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autotune", "dashboard", "--storage", storage, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_until_up(proc: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the dashboard exited with {proc.returncode}:\n{out}\n{err}")
        try:
            get_json(base + "/api/meta")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not answer within {START_TIMEOUT_S}s")
            time.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.terminate()
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def dashboard(storage_url: str, tmp_path: Path, host, fake_space) -> Iterator[Dashboard]:
    make_study(storage_url, tmp_path, host, fake_space)
    port = free_port()
    proc = start_dashboard(storage_url, port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(proc, base)
        yield Dashboard(proc, base)
    finally:
        stop(proc)


def test_dashboard_shows_trials_with_their_user_attrs(dashboard: Dashboard, storage_url: str) -> None:
    summaries = dashboard.api("/api/studies")["study_summaries"]
    (summary,) = [s for s in summaries if s["study_name"] == STUDY]
    study_attrs = {a["key"] for a in summary["user_attrs"]}
    assert {"host_fingerprint", "pins"} <= study_attrs

    detail = dashboard.api(f"/api/studies/{summary['study_id']}")
    trials = detail["trials"]
    assert len(trials) == 3
    by_role = {}
    for trial in trials:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        for key in ("role", "outcome", "reason", "config", "host", "worker", "voxels_per_s", "median_step_s"):
            assert key in attrs, f"trial {trial['number']} lacks {key}"
        by_role.setdefault(attrs["role"], attrs)
    baseline = by_role["baseline"]
    assert baseline["outcome"] == "ok"
    assert float(baseline["voxels_per_s"]) > 0
    assert json.loads(baseline["config"])["onednn"] is False
    assert {"key": "outcome", "sortable": False} in detail["union_user_attrs"] or any(
        a["key"] == "outcome" for a in detail["union_user_attrs"])

    password = storage_url.split(":")[2].split("@")[0] if "@" in storage_url else None
    out, err = stop(dashboard.proc)
    assert f"on http://127.0.0.1:{dashboard.base.rsplit(':', 1)[1]}/" in out
    assert STUDY in out
    if password:
        assert password not in out + err
        assert "autotune:***@" in out
    assert "warning" not in err


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("nosuchdialect://x/y", "autotune: error: cannot open storage nosuchdialect://x/y: "),
        ("postgresql://tuner:s3cret@127.0.0.1:1/optuna",
         "autotune: error: cannot open storage postgresql://tuner:***@127.0.0.1:1/optuna: "),
    ],
)
def test_bad_storage_is_one_line_and_exit_2(storage: str, message: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "autotune", "dashboard", "--storage", storage, "--port",
                           str(free_port())], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert proc.returncode == 2
    assert proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "s3cret" not in proc.stderr + proc.stdout


def test_missing_sqlite_file_is_refused_not_created(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "autotune", "dashboard", "--port", str(free_port())],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert proc.returncode == 2
    assert proc.stderr == ("autotune: error: no study storage at autotune.db: run `autotune run` first, "
                           "or give --storage\n")
    assert not (tmp_path / "autotune.db").exists()


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path, host, fake_space) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make_study(url, tmp_path, host, fake_space)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "autotune", "dashboard", "--storage", url, "--port",
                               str(port)], capture_output=True, text=True, timeout=60)

    assert proc.returncode == 2
    assert proc.stderr.startswith(f"autotune: error: cannot listen on 127.0.0.1:{port}: ")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_warning(host: str) -> None:
    assert bind_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10"])
def test_other_addresses_warn(host: str) -> None:
    warning = bind_warning(host)
    assert warning is not None
    assert "without authentication" in warning
    assert host in warning
