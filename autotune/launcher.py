"""``autotune exec``: run any command with a tuned configuration applied.

The launcher works the way ``numactl`` and ``taskset`` do: it builds the environment (the record's
variables set, its null variables removed, the allocator in ``LD_PRELOAD``), pins itself to the
record's CPUs, and then *becomes* the command with ``execve``. The affinity mask is inherited across
exec, and since the process is the command, its exit status and any signal that ends it reach the
caller unchanged; nothing stays behind to forward them.

In-process knobs (threads, data layout, batch, ...) cannot be applied to an arbitrary command: the
command finds them as JSON in ``AUTOTUNE_PARAMS`` and applies them itself.

A record with several instances cannot become one command: :func:`supervise` starts one pinned copy per
instance (each told ``AUTOTUNE_INSTANCE`` and ``AUTOTUNE_INSTANCES``, its memory bound with numactl where
the host has several NUMA nodes and numactl is installed), each in a process group of its own with stdin
from /dev/null, forwards INT, TERM, HUP, QUIT, USR1 and USR2 to all of them, waits for all, and returns the
first non-zero status in the order they ended (a copy killed by a signal counts as 128 + its number, as
shells count it), or 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from autotune.errors import UserError
from autotune.exits import Exit
from autotune.export import PARAMS_VARIABLE, LaunchRecord
from autotune.host import format_cpu_list
from autotune.layout import instance_env, membind_prefix

EXIT_NOT_FOUND = Exit.NOT_FOUND
EXIT_NOT_EXECUTABLE = Exit.NOT_EXECUTABLE
"""Exit statuses for a command that cannot be started, as POSIX shells give them."""

# Python ignores these at start-up; an ignored signal stays ignored across exec, so put them back
# (subprocess's restore_signals does the same).
_RESTORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)


class CommandError(Exception):
    """The command could not be started.

    Attributes:
        status: The exit status to end with (127: not found, 126: found but not executable).
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def child_env(base: Mapping[str, str], record: LaunchRecord) -> dict[str, str]:
    """The command's environment: ``base`` with the record's changes and ``AUTOTUNE_PARAMS``."""
    env = dict(base)
    for name, value in record.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env[PARAMS_VARIABLE] = record.params_json
    return env


def check_host(record: LaunchRecord, where: str, usable: set[int] | None = None) -> None:
    """Check that this host can give what the record asks: its CPUs and its allocator library.

    Args:
        record: The configuration.
        where: How messages name the configuration, e.g. ``"best.json: best"``.
        usable: The CPUs this process may use (default: its affinity mask).

    Raises:
        UserError: A CPU is not usable here, or an ``LD_PRELOAD`` path does not exist.
    """
    wanted = record.cpus if record.layout is None else tuple(c for s in record.layout.slots for c in s.cpus)
    if wanted is not None:
        if usable is None:
            if not hasattr(os, "sched_getaffinity"):
                raise UserError(f"{where}.cpus: this system cannot pin a process to CPUs")
            usable = os.sched_getaffinity(0)
        missing = sorted(set(wanted) - usable)
        if missing:
            raise UserError(
                f"{where}.cpus: CPU(s) {format_cpu_list(missing)} are not usable here "
                f"(this process may use {format_cpu_list(usable)})"
            )
    preload = record.env.get("LD_PRELOAD")
    # The loader skips a missing library with a warning: the command would run, silently untuned.
    for library in re.split(r"[:\s]+", preload or ""):
        if "/" in library and not os.path.exists(library):
            raise UserError(f"{where}.env.LD_PRELOAD: {library} does not exist on this host")


def exec_record(record: LaunchRecord, argv: Sequence[str], where: str) -> NoReturn:
    """Replace this process with ``argv``, the configuration applied.

    Args:
        record: The configuration.
        argv: The command and its arguments; the command is looked up in the new ``PATH``.
        where: How messages name the configuration.

    Raises:
        UserError: The host cannot give what the record asks (see :func:`check_host`).
        CommandError: The command was not found or cannot be executed; nothing was started.
    """
    if not argv:
        raise UserError("no command to run")
    check_host(record, where)
    env = child_env(os.environ, record)
    if record.cpus is not None:
        try:
            os.sched_setaffinity(0, record.cpus)
        except OSError as exc:
            raise UserError(f"{where}.cpus: cannot pin to them: {exc.strerror or exc}") from None
    for signum in _RESTORED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], list(argv), env)  # noqa: S606 - the user's own command, no shell
    except FileNotFoundError:
        raise CommandError(f"{argv[0]}: command not found", EXIT_NOT_FOUND) from None
    except OSError as exc:
        raise CommandError(f"{argv[0]}: {exc.strerror or exc}", EXIT_NOT_EXECUTABLE) from None


_FORWARDED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
                   if hasattr(signal, name))


def supervise(record: LaunchRecord, argv: Sequence[str], where: str) -> int:
    """Run one pinned copy of ``argv`` per instance of the record's layout and return the status to exit with.

    Raises:
        UserError: The host cannot give what the record asks (see :func:`check_host`).
        CommandError: The command was not found or cannot be executed; no copy was left running.
    """
    if not argv:
        raise UserError("no command to run")
    assert record.layout is not None
    check_host(record, where)
    env = child_env(os.environ, record)
    count = record.layout.instances
    procs: list[subprocess.Popen[bytes]] = []
    previous = {signum: signal.getsignal(signum) for signum in _FORWARDED}

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    try:
        for index, slot in enumerate(record.layout.slots):
            try:
                procs.append(subprocess.Popen(
                    [*membind_prefix(slot), *argv], env={**env, **instance_env(index, count)},
                    stdin=subprocess.DEVNULL, process_group=0,
                    preexec_fn=lambda cpus=slot.cpus: os.sched_setaffinity(0, cpus)))
            except (FileNotFoundError, PermissionError, OSError) as exc:
                forward(signal.SIGTERM, None)
                for proc in procs:
                    proc.wait()
                status = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
                raise CommandError(f"{argv[0]}: {exc.strerror or exc}", status) from None
        return _wait_all(procs)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_all(procs: list[subprocess.Popen[bytes]]) -> int:
    """Wait for every copy; the first non-zero status in the order they ended, or 0."""
    waiting = {proc.pid: proc for proc in procs}
    first = 0
    while waiting:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        proc = waiting.pop(pid, None)
        if proc is None:
            continue
        code = proc.returncode = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
        if first == 0 and code != 0:
            first = code
    return first
