"""Resilience of ``autotune run``, end to end: real driver processes of the fake workload on SQLite.

* A driver killed with SIGKILL mid-trial takes its trial with it (``PR_SET_PDEATHSIG``), and the same
  command resumes the study: the orphan becomes FAIL/interrupted, nothing measured is lost.
* Ctrl-C (SIGINT) mid-trial: exit status 130, the trial FAIL/interrupted, the report consistent.
* Faults inside trials (segfault, an OOM kill, the memory cap, a hang, grandchildren, half a result)
  each become their outcome with a reason, and the study goes on.
* A report folder on a full disk: every trial is stored, one error line, exit status 74.

Every driver carries a unique marker in its environment, which its trials and their children inherit;
after each test no process on the host may carry it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "data" / "fake.toml"
STUDY = "resilience"
MARKER_ENV = "AUTOTUNE_RESILIENCE_MARKER"
# channels_last and oneDNN pinned, so every trial costs 1 to 2.5 times 6 steps of 0.1 s: long enough to
# be caught mid-trial, short enough to keep the file fast.
PINS = ("--set", "data_format=channels_last", "--set", "onednn=true", "--set", "step_seconds=0.1",
        "--set", "steps=5")
# One silent step of 1 to 3 s per trial: a trial killed with its driver would live on through the step
# (it only dies of the broken pipe at its next message) unless the kernel kills it with the driver.
SILENT_PINS = ("--set", "data_format=channels_last", "--set", "onednn=true", "--set", "step_seconds=1.0",
               "--set", "steps=1", "--set", "warmup=0")
# Seconds from a trial's start to the middle of its first step (interpreter start-up and imports).
INTO_THE_STEP_S = 0.4
RUNNING = optuna.trial.TrialState.RUNNING
COMPLETE = optuna.trial.TrialState.COMPLETE
FAIL = optuna.trial.TrialState.FAIL
# EX_IOERR: the study ran, its report could not be written (autotune.report.EXIT_REPORT_NOT_WRITTEN).
EXIT_REPORT_NOT_WRITTEN = 74
FILE_SIZE_LIMIT = 1 << 20  # bytes: the study database fits, report.html (plotly.js inlined) does not

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def command(tmp_path: Path, trials: int, *extra: str, space: Path = FAKE, trial_timeout: float = 30) -> list[str]:
    return [sys.executable, "-m", "autotune", "run", "--workload", "fake", "--space", str(space),
            "--storage", storage(tmp_path), "--study", STUDY, "--trials", str(trials),
            "--report-dir", str(tmp_path / "report"), "--confirm-repeats", "0", "--no-profile",
            "--trial-timeout", str(trial_timeout), "--memory-cap", "300", *extra]


def environment(marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KMP_", "OMP_"))}
    env.update({MARKER_ENV: marker, "COLUMNS": "200"})  # AUTOTUNE_LOCK_DIR: the suite's private one
    return env


def start(args: list[str], tmp_path: Path, marker: str, name: str) -> subprocess.Popen[bytes]:
    """Start a driver with its output in files (a pipe nobody reads could stall it)."""
    with open(tmp_path / f"{name}.out", "wb") as out, open(tmp_path / f"{name}.err", "wb") as err:
        return subprocess.Popen(args, cwd=tmp_path, env=environment(marker), stdout=out, stderr=err)


def run(args: list[str], tmp_path: Path, marker: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=tmp_path, env=environment(marker), capture_output=True, text=True,
                          timeout=120, **kwargs)


def trials_of(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=STUDY, storage=storage(tmp_path))
    return sorted(study.get_trials(), key=lambda t: t.number)


def wait_for_measuring(driver: subprocess.Popen[bytes], tmp_path: Path, completed: int, timeout: float = 60) -> int:
    """Wait until the driver measures a trial (its child running) after ``completed`` complete trials;
    return that trial's number."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, (tmp_path / "driver.err").read_text()[-2000:]
        try:
            children = psutil.Process(driver.pid).children(recursive=True)
            measuring = any("workloads.fake" in " ".join(child.cmdline()) for child in children)
            trials = trials_of(tmp_path) if measuring else []
        except (psutil.Error, KeyError, optuna.exceptions.OptunaError):
            trials = []  # the study is not created yet, or a child ended while being looked at
        mine = [t for t in trials if t.state == RUNNING and t.user_attrs.get("worker", "").endswith(f":{driver.pid}")]
        if mine and sum(t.state == COMPLETE for t in trials) >= completed:
            return mine[-1].number
        time.sleep(0.05)
    raise AssertionError(f"no trial measuring after {completed} complete trials within {timeout}s")


def strays(marker: str, grace: float = 5.0) -> list[str]:
    """Processes that carry ``marker`` (a driver, its trials, their children), after a grace period."""
    deadline = time.monotonic() + grace
    while True:
        found = []
        for proc in psutil.process_iter():
            try:
                if (proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE
                        and proc.environ().get(MARKER_ENV) == marker):
                    found.append(f"{proc.pid} {' '.join(proc.cmdline())}")
            except psutil.Error:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture
def marker() -> Iterator[str]:
    marker = uuid.uuid4().hex
    yield marker
    for proc in psutil.process_iter():  # whatever a failed test left: never leave it on the host
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARKER_ENV) == marker:
                proc.kill()
        except psutil.Error:
            continue


def test_kill_9_mid_trial_then_the_same_command_resumes(tmp_path: Path, marker: str) -> None:
    driver = start(command(tmp_path, 20, *SILENT_PINS), tmp_path, marker, "driver")
    try:
        orphan = wait_for_measuring(driver, tmp_path, completed=2)
        time.sleep(INTO_THE_STEP_S)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == -signal.SIGKILL
    # Well within the trial's silent step: only the parent-death signal can have ended it by now.
    assert strays(marker, grace=0.5) == [], "the trial outlived its killed driver"
    before = trials_of(tmp_path)
    assert before[orphan].state == RUNNING
    complete = {t.number: t.value for t in before if t.state == COMPLETE}
    assert len(complete) >= 2

    resumed = run(command(tmp_path, 3, *SILENT_PINS), tmp_path, marker)

    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stdout + resumed.stderr
    after = trials_of(tmp_path)
    assert after[orphan].state == FAIL
    assert after[orphan].user_attrs["outcome"] == "interrupted"
    assert "driver was killed" in after[orphan].user_attrs["reason"]
    assert {n: after[n].value for n in complete if after[n].state == COMPLETE} == complete
    new = after[len(before):]
    assert len(new) == 3, "the resumed run runs its own --trials"
    assert all(t.state.is_finished() for t in after)
    assert strays(marker) == []
    best = json.loads((tmp_path / "report" / "best.json").read_text())
    assert best["trials"]["interrupted"] == 1
    print(f"kill -9 during trial {orphan}: {len(before)} trials stored ({len(complete)} complete, 1 running); "
          f"resumed with --trials 3: {len(after)} trials, {sum(t.state == COMPLETE for t in after)} complete, "
          f"the orphan FAIL/interrupted")


def test_ctrl_c_mid_trial_exits_130_with_a_consistent_report(tmp_path: Path, marker: str) -> None:
    driver = start(command(tmp_path, 20, *PINS), tmp_path, marker, "driver")
    try:
        interrupted = wait_for_measuring(driver, tmp_path, completed=1)
        os.kill(driver.pid, signal.SIGINT)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    out, err = (tmp_path / "driver.out").read_text(), (tmp_path / "driver.err").read_text()

    assert driver.returncode == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err
    assert strays(marker) == [], "the trial's process group survived Ctrl-C"
    trials = trials_of(tmp_path)
    assert trials[interrupted].state == FAIL
    assert trials[interrupted].user_attrs["outcome"] == "interrupted"
    assert "Ctrl-C" in trials[interrupted].user_attrs["reason"]
    assert not [t.number for t in trials if t.state == RUNNING]
    best = json.loads((tmp_path / "report" / "best.json").read_text())
    assert best["study"] == STUDY
    assert best["trials"] == Counter(str(t.user_attrs.get("outcome", t.state.name.lower())) for t in trials)
    assert best["best"]["trial"] in {t.number for t in trials if t.state == COMPLETE}
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"| {interrupted} | interrupted | stopped by the user (Ctrl-C) |" in report
    assert (tmp_path / "report" / "report.html").stat().st_size > 0


# Fault -> (outcome, a piece of its reason). oom_kill is the kernel's OOM killer (SIGKILL); memory
# grows past --memory-cap and is stopped by the driver.
FAULTS = {
    "none": ("ok", ""),
    "segfault": ("crashed", "SIGSEGV (segmentation fault)"),
    "oom_kill": ("out_of_memory", "SIGKILL (most likely the kernel's out-of-memory killer)"),
    "memory": ("out_of_memory", "exceeded the cap of 300 MiB"),
    "hang": ("timed_out", "no result within the trial timeout of 3s"),
    "spawn": ("timed_out", "no result within the trial timeout of 3s"),
    "half_result": ("bad_output", "unreadable protocol line"),
}


def fault_space(tmp_path: Path) -> Path:
    """tests/data/fake.toml with only ``fault`` searched, over :data:`FAULTS`."""
    text = FAKE.read_text()
    every = '["none", "crash", "segfault", "hang", "garbage", "no_result", "half_result", "memory", "spawn", ' \
            '"bad_input", "exit"]\ndefault = "none"\ntarget = "param"\nsearch = false'
    assert every in text, "the fault knob of tests/data/fake.toml changed"
    text = text.replace(every, f'{json.dumps(list(FAULTS))}\ndefault = "none"\ntarget = "param"\nsearch = true')
    for knob in ("batch", "data_format", "transpose_elimination", "intra_threads", "onednn"):
        assert f"[knobs.{knob}]\n" in text
        text = text.replace(f"[knobs.{knob}]\n", f"[knobs.{knob}]\nsearch = false\n")
    path = tmp_path / "faults.toml"
    path.write_text(text)
    return path


def test_every_fault_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path: Path, marker: str) -> None:
    args = command(tmp_path, 2 + len(FAULTS), "--sampler", "grid", "--no-prune", "--set", "step_seconds=0.01",
                   "--set", "fault_mb=2048", space=fault_space(tmp_path), trial_timeout=3)

    done = run(args, tmp_path, marker)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert strays(marker) == [], "a trial or its grandchild survived"
    trials = trials_of(tmp_path)
    assert all(t.state.is_finished() for t in trials)
    searched = {t.params["fault"]: t for t in trials if t.user_attrs.get("role") == "search"}
    assert set(searched) == set(FAULTS)
    for fault, (outcome, reason) in FAULTS.items():
        trial = searched[fault]
        assert trial.user_attrs["outcome"] == outcome, (fault, trial.user_attrs.get("reason"))
        assert reason in trial.user_attrs["reason"], (fault, trial.user_attrs["reason"])
        assert trial.state == (COMPLETE if outcome == "ok" else FAIL)
    assert searched["memory"].user_attrs["peak_rss_mb"] > 300
    report = (tmp_path / "report" / "report.md").read_text()
    for fault, (outcome, _) in FAULTS.items():
        if outcome != "ok":
            assert f"| {searched[fault].number} | {outcome} |" in report


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_full_disk_for_the_report_keeps_the_trials_and_says_so_in_one_line(tmp_path: Path, marker: str) -> None:
    # RLIMIT_FSIZE makes writes past 1 MiB fail as on a full disk (EFBIG rather than ENOSPC: no root,
    # no mounts); the study database stays far below it.
    done = run(command(tmp_path, 3, *PINS), tmp_path, marker, preexec_fn=limit_file_size)

    assert done.returncode == EXIT_REPORT_NOT_WRITTEN, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("autotune:")]
    assert len(errors) == 1 and errors[0] == done.stderr.splitlines()[-1], done.stderr
    assert errors[0].startswith(f"autotune: error: cannot write the report to {tmp_path / 'report'}: File too large")
    assert f"autotune report --study {STUDY} --report-dir DIR" in errors[0]
    assert f"study {STUDY}" in done.stdout, "the summary is printed even so"
    assert "wrote " not in done.stdout
    trials = trials_of(tmp_path)
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
    assert strays(marker) == []

    again = run([sys.executable, "-m", "autotune", "report", "--study", STUDY, "--storage", storage(tmp_path),
                 "--workload", "fake", "--space", str(FAKE), "--report-dir", str(tmp_path / "elsewhere")],
                tmp_path, marker)

    assert again.returncode == 0, again.stderr
    written = json.loads((tmp_path / "elsewhere" / "best.json").read_text())
    assert sum(written["trials"].values()) == 3


class CtrlCWhileSampling:
    """A search space whose sampling is interrupted (Ctrl-C) after ``after`` configurations."""

    def __init__(self, space, after: int) -> None:
        self.space = space
        self.after = after

    def suggest(self, trial, pins):
        if self.after <= 0:
            raise KeyboardInterrupt
        self.after -= 1
        return self.space.suggest(trial, pins)

    def __getattr__(self, name: str):
        return getattr(self.space, name)


def test_ctrl_c_between_measurements_fails_the_asked_trial(tmp_path: Path, host, fake_space) -> None:
    from autotune.study import RunOptions, run_study

    options = RunOptions(trials=5, storage=storage(tmp_path), study_name=STUDY, report_dir=tmp_path / "report",
                         trial_timeout_s=10.0, memory_cap_mb=300.0, confirm_repeats=0)
    try:
        status = run_study(options, host, CtrlCWhileSampling(fake_space, after=1), {"step_seconds": 0.003})
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C while sampling escaped run_study: no report, and the asked trial left RUNNING")

    assert status == 130
    trials = trials_of(tmp_path)
    assert [t.state for t in trials[:2]] == [COMPLETE, FAIL]
    assert trials[1].user_attrs["outcome"] == "interrupted"
    assert not [t for t in trials if t.state == RUNNING]
    assert json.loads((tmp_path / "report" / "best.json").read_text())["trials"]["interrupted"] == 1
