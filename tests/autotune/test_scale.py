"""Scale-out: several workers on one study (SQLite on one host, PostgreSQL across hosts), the core lock.

The PostgreSQL tests use the session's throw-away server (tests/autotune/conftest.py); every test gets
an empty database. Both workers run on this host, so the core lock makes them take turns: that is
what a user gets running two workers on one machine, and what the tests check.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from autotune.errors import UserError
from autotune.lock import EXIT_BUSY, CoreLock, advisory_key, study_setup_lock
from autotune.study import RunOptions, run_study

ROOT = Path(__file__).resolve().parents[2]
FAKE_SPACE = ROOT / "tests" / "data" / "fake.toml"
STUDY = "scale"
PINS = {"step_seconds": 0.003}
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)


def worker_command(url: str, tmp_path: Path, *extra: str, trials: int = 6, study: str = STUDY) -> list[str]:
    return [
        sys.executable, "-m", "autotune", "run", "--space", str(FAKE_SPACE), "--storage", url,
        "--study", study, "--trials", str(trials), "--set", "step_seconds=0.003",
        "--trial-timeout", "30", "--memory-cap", "400", "--confirm-repeats", "0",
        "--report-dir", str(tmp_path / "report"), *extra,
    ]


def start_workers(url: str, tmp_path: Path, count: int, trials: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(worker_command(url, tmp_path, trials=trials), cwd=tmp_path, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
        for _ in range(count)
    ]


def finish(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append((proc.returncode, out, err))
    return results


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def trials_of(url: str, study: str = STUDY) -> list[optuna.trial.FrozenTrial]:
    return sorted(optuna.load_study(study_name=study, storage=url).get_trials(), key=lambda t: t.number)


def held_spans(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[float, float, str]]:
    """(start, end, worker) of each measured trial's hold of the core lock."""
    return sorted((*t.user_attrs["cores_held"], t.user_attrs["worker"])
                  for t in trials if "cores_held" in t.user_attrs)


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty study storage that several workers can share: the contract runs on both."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return request.getfixturevalue("postgres_url")


def test_two_workers_share_one_study(shared_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    results = finish(start_workers(shared_url, tmp_path, count=2, trials=6))
    elapsed = time.monotonic() - started

    for status, out, err in results:
        assert status == 0, f"worker failed:\n{out[-3000:]}\n{err[-3000:]}"
    trials = trials_of(shared_url)
    assert len(trials) == 12, "each worker runs its --trials, none lost"
    assert len({t.number for t in trials}) == len(trials)
    assert len({t._trial_id for t in trials}) == len(trials)
    roles = Counter(t.user_attrs.get("role") for t in trials)
    assert roles["baseline"] == 1 and roles["vendor_recommended"] == 1, roles
    for trial in trials:
        assert trial.state in FINISHED, f"trial {trial.number} left {trial.state.name}"
        assert trial.user_attrs.get("host"), f"trial {trial.number} has no host"
        assert trial.user_attrs.get("worker"), f"trial {trial.number} has no worker"
    workers = Counter(t.user_attrs["worker"] for t in trials)
    assert len(workers) == 2 and all(count >= 3 for count in workers.values()), workers
    # One trial on the cores at a time: the measured spans of the two workers do not overlap.
    spans = held_spans(trials)
    assert {worker for *_, worker in spans} == set(workers)
    for (_, end, _), (next_start, _, _) in itertools.pairwise(spans):
        assert next_start >= end, f"two trials measured at once: {spans}"
    switches = sum(a[2] != b[2] for a, b in itertools.pairwise(spans))
    waits = sum(t.user_attrs.get("cores_wait_s", 0) > 0 for t in trials)
    # Two runs joined: the second sampled with another seed.
    assert optuna.load_study(study_name=STUDY, storage=shared_url).user_attrs["runs"] == 2
    print(f"two workers, {len(trials)} trials in {elapsed:.1f}s: {dict(workers)}, "
          f"{switches} switches of worker on the cores, {waits} trials waited for them")


def test_password_never_reaches_output(postgres_url: str, tmp_path: Path) -> None:
    password = postgres_url.split(":")[2].split("@")[0]
    ((status, out, err),) = finish(start_workers(postgres_url, tmp_path, count=1, trials=2))

    assert status == 0, err
    assert password not in out + err
    for path in (tmp_path / "report").iterdir():
        assert password.encode() not in path.read_bytes(), path.name


def test_bad_password_is_one_line_without_it(postgres_url: str, tmp_path: Path) -> None:
    wrong = postgres_url.replace(postgres_url.split(":")[2].split("@")[0], "wrong-s3cret")
    proc = subprocess.run(worker_command(wrong, tmp_path, trials=1), cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)

    assert proc.returncode == 2
    assert proc.stderr.startswith("autotune: error: cannot open storage postgresql://autotune:***@")
    assert proc.stderr.count("\n") == 1
    assert "wrong-s3cret" not in proc.stdout + proc.stderr


SETUP_SCRIPT = """
import os, sys, time
from pathlib import Path
from autotune.host import probe_host
from autotune.space import HostFacts, load_space
from autotune.study import RunOptions, open_shared_study
url, space_path, gate, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
host = probe_host(software=False)
space = load_space(space_path, HostFacts.of(host))
(gate / str(os.getpid())).touch()
while len(list(gate.iterdir())) < count:  # start together
    time.sleep(0.005)
open_shared_study(RunOptions(storage=url), "race", host, space, {"step_seconds": 0.003})
"""


def test_concurrent_set_up_enqueues_the_references_once(shared_url: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", SETUP_SCRIPT, shared_url, str(FAKE_SPACE), str(gate), "4"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for status, _, err in finish(procs, timeout=60):
        assert status == 0, err

    trials = trials_of(shared_url, "race")
    assert sorted(t.user_attrs["role"] for t in trials) == ["baseline", "vendor_recommended"]
    assert all(t.state == optuna.trial.TrialState.WAITING for t in trials)
    assert optuna.load_study(study_name="race", storage=shared_url).user_attrs["runs"] == 4


def test_worker_of_another_host_is_refused_unless_allowed(postgres_url: str, tmp_path: Path, host,
                                                          fake_space) -> None:
    ((status, _, err),) = finish(start_workers(postgres_url, tmp_path, count=1, trials=2))
    assert status == 0, err
    other = dataclasses.replace(host, cpu_model="Some Other CPU")
    options = RunOptions(trials=1, timeout_s=60, storage=postgres_url, study_name=STUDY,
                         report_dir=tmp_path / "other", trial_timeout_s=30, memory_cap_mb=400,
                         confirm_repeats=0)

    with pytest.raises(UserError, match=r"recorded on host .*--allow-mixed-hosts"):
        run_study(options, other, fake_space, PINS)
    assert len(trials_of(postgres_url)) == 2

    mixed = dataclasses.replace(options, allow_mixed_hosts=True)
    assert run_study(mixed, other, fake_space, PINS) == 0
    trials = trials_of(postgres_url)
    assert len(trials) == 3
    assert trials[-1].user_attrs["host_fingerprint"] == other.fingerprint
    assert optuna.load_study(study_name=STUDY, storage=postgres_url).user_attrs["host_fingerprint"] != other.fingerprint


def test_advisory_lock_is_exclusive_across_connections(postgres_url: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with study_setup_lock(postgres_url, "locked"), engine.connect() as other:
            taken = other.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"),
                                  {"k": advisory_key("locked")}).scalar()
            assert taken is False
        with engine.connect() as other:
            assert other.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"),
                                 {"k": advisory_key("locked")}).scalar() is True
    finally:
        engine.dispose()


def test_set_up_lock_gives_up_after_its_timeout(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    with (
        study_setup_lock(url, "busy"),
        pytest.raises(UserError, match="still setting up study 'busy'"),
        study_setup_lock(url, "busy", timeout_s=0.2),
    ):
        pass


HOLDER = """
import sys, time
from pathlib import Path
from autotune.lock import CoreLock
lock = CoreLock(Path(sys.argv[1]))
assert lock.try_acquire("test holder")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_in_child(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_core_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "cores.lock"
    holder = hold_in_child(path, 30)
    try:
        lock = CoreLock(path)
        assert not lock.try_acquire()
        assert lock.holder().endswith(f":{holder.pid} test holder")
    finally:
        holder.kill()
        holder.wait()
    assert lock.try_acquire(), "a killed holder leaves the lock free"
    lock.release()


def test_core_lock_waits_for_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "cores.lock"
    holder = hold_in_child(path, 0.5)
    lock = CoreLock(path)
    waited = lock.acquire()
    holder.wait()
    assert 0.2 < waited < 10
    lock.release()


def test_core_lock_is_per_machine_not_per_software(host, private_lock_dir: Path) -> None:
    other_stack = dataclasses.replace(host, software={**host.software, "tensorflow": "0.0-other"})
    assert CoreLock.for_host(host).path == CoreLock.for_host(other_stack).path
    assert CoreLock.for_host(host).path.parent == private_lock_dir


def test_no_wait_exits_75_while_another_worker_measures(tmp_path: Path, host) -> None:
    lock = CoreLock.for_host(host)
    assert lock.try_acquire("the test")
    try:
        proc = subprocess.run(worker_command(sqlite_url(tmp_path), tmp_path, "--no-wait", trials=1),
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        lock.release()

    assert proc.returncode == EXIT_BUSY
    assert proc.stderr.startswith("autotune: error: another autotune worker is measuring on this host's cores")
    assert "the test" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "study.db").exists(), "refused before touching the study"


def start_waiting_worker(tmp_path: Path) -> subprocess.Popen[str]:
    """Start a one-trial worker while the cores are taken; return once it waits for them."""
    proc = subprocess.Popen(worker_command(sqlite_url(tmp_path), tmp_path, trials=1), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 30
    while not _is_waiting(sqlite_url(tmp_path)):
        assert proc.poll() is None and time.monotonic() < deadline, "the worker never reached its trial"
        time.sleep(0.1)
    time.sleep(0.5)
    return proc


def _is_waiting(url: str) -> bool:
    try:
        trials = trials_of(url)
    except Exception:  # no study yet
        return False
    return any("config" in t.user_attrs and t.state == optuna.trial.TrialState.RUNNING for t in trials)


def test_waiting_worker_says_so_and_records_the_wait(tmp_path: Path, host) -> None:
    lock = CoreLock.for_host(host)
    assert lock.try_acquire("the test")
    try:
        proc = start_waiting_worker(tmp_path)
    finally:
        lock.release()
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, err
    assert "waiting for cores: another autotune worker is measuring" in out
    assert "the test" in out
    trial = trials_of(sqlite_url(tmp_path))[0]
    assert trial.user_attrs["outcome"] == "ok"
    assert trial.user_attrs["cores_wait_s"] > 0.4
    start, end = trial.user_attrs["cores_held"]
    assert 0 < end - start < 30


def test_interrupt_while_waiting_for_cores_fails_the_trial_as_interrupted(tmp_path: Path, host) -> None:
    lock = CoreLock.for_host(host)
    assert lock.try_acquire("the test")
    try:
        proc = start_waiting_worker(tmp_path)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        lock.release()

    assert proc.returncode == 130, out + err
    trial = trials_of(sqlite_url(tmp_path))[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["outcome"] == "interrupted"


def test_lock_file_is_shared_by_users(tmp_path: Path) -> None:
    path = tmp_path / "cores.lock"
    lock = CoreLock(path)
    assert lock.try_acquire()
    lock.release()
    assert path.stat().st_mode & 0o666 == 0o666
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a read-only descriptor can lock too
    finally:
        os.close(fd)
