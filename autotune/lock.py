"""Locks that let several autotune workers share one host and one study.

Two locks, two scopes:

* :class:`CoreLock`, one per machine: an ``flock`` on a file in ``$AUTOTUNE_LOCK_DIR`` (default: the
  system temp dir). A worker holds it only while one trial measures (``study._Loop._measure``), so
  two workers on one host take turns on the cores instead of measuring each other (DESIGN: only one
  trial runs on a set of cores at a time). The kernel drops an ``flock`` when its holder exits, so a
  killed worker never leaves it held, and trial children do not inherit it (Python opens files
  non-inheritable).
* :func:`study_setup_lock`, one per study: held while a worker opens the study, checks its host and
  ``--set`` pins and enqueues the baseline and vendor-recommended trials. Those steps read, then
  write; without the lock two workers starting together could both see "no baseline yet" and both
  enqueue it, or both create Optuna's tables at once. On PostgreSQL it is a session advisory lock
  (``pg_try_advisory_lock``) in the study's own database, so it covers workers on every host and is
  released by the server if the worker dies; other storages (SQLite) are shared by one host only,
  and use one ``flock`` for every study set-up on the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.errors import UserError
from autotune.exits import Exit

if TYPE_CHECKING:
    from autotune.host import HostInfo

LOCK_DIR_ENV = "AUTOTUNE_LOCK_DIR"
# Exit status of a worker that finds the cores busy under --no-wait: EX_TEMPFAIL from sysexits.h,
# "a temporary failure; the user is invited to retry later".
EXIT_BUSY = Exit.CORES_BUSY
# Longest wait for another worker's study set-up (opening, checks, enqueueing take well under a second).
SETUP_LOCK_TIMEOUT_S = 120.0
POLL_SECONDS = 0.05


class CoresBusy(UserError):
    """Another autotune worker is measuring on this host and the user asked not to wait."""

    exit_status = EXIT_BUSY


def lock_dir() -> Path:
    """Where lock files live: ``$AUTOTUNE_LOCK_DIR`` or the system temp dir."""
    return Path(os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir())


class CoreLock:
    """The cores of one machine: at most one trial measures on them at a time.

    Life cycle: the study loop creates one per run, calls :meth:`try_acquire` before each trial's
    measurement and, when that fails, reports the wait and calls :meth:`acquire` (which blocks until
    the other worker's trial ends); :meth:`release` right after the child exits. The lock file names
    the host by its hardware fingerprint (software versions left out), so workers from different
    virtual environments on one machine take turns too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def for_host(cls, host: HostInfo) -> CoreLock:
        """The lock of this machine's cores."""
        hardware = dataclasses.replace(host, software={}).fingerprint
        return cls(lock_dir() / f"autotune-cores-{hardware}.lock")

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def try_acquire(self, note: str = "") -> bool:
        """Take the lock if it is free; return whether this object now holds it."""
        return self._take(fcntl.LOCK_EX | fcntl.LOCK_NB, note)

    def acquire(self, note: str = "") -> float:
        """Take the lock, waiting as long as it takes; return the seconds waited."""
        start = time.monotonic()
        self._take(fcntl.LOCK_EX, note)
        return time.monotonic() - start

    def release(self) -> None:
        """Give the lock back (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (``host:pid`` and what it runs), or ``?``."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        return text.splitlines()[0] if text else "?"

    def _take(self, operation: int, note: str) -> bool:
        if self._fd is not None:
            return True
        fd = _open_lock_file(self.path)
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:  # KeyboardInterrupt while waiting
            os.close(fd)
            raise
        self._fd = fd
        with contextlib.suppress(OSError):  # the holder's note is informational
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()}:{os.getpid()} {note}".strip().encode() + b"\n", 0)
        return True


def _open_lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # Another user's lock file in a shared temp dir: flock works on a read-only descriptor too.
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise UserError(f"cannot open the core lock {path}: {exc.strerror}; set {LOCK_DIR_ENV}") from None
    except OSError as exc:
        raise UserError(f"cannot create the core lock {path}: {exc.strerror}; set {LOCK_DIR_ENV}") from None
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # let workers of other users on this host take turns too
    return fd


@contextlib.contextmanager
def study_setup_lock(url: str, study: str, *, shown_url: str | None = None,
                     timeout_s: float = SETUP_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the set-up lock of study ``study`` in storage ``url`` for the ``with`` block.

    Args:
        url: The Optuna storage URL.
        study: The study name.
        shown_url: The URL as messages may show it (password redacted); default ``url``.
        timeout_s: Longest wait for another worker's set-up.

    Raises:
        UserError: The storage cannot be reached, or the lock stayed taken past ``timeout_s``.
    """
    shown = shown_url or url
    if url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres"):
        with _advisory_lock(url, study, shown, timeout_s):
            yield
        return
    lock = CoreLock(lock_dir() / "autotune-study-setup.lock")  # one per host: set-ups take well under 1 s
    deadline = time.monotonic() + timeout_s
    while not lock.try_acquire(f"setting up study {study}"):
        if time.monotonic() > deadline:
            raise UserError(f"another worker ({lock.holder()}) is still setting up study {study!r} "
                            f"after {timeout_s:g}s; try again")
        time.sleep(POLL_SECONDS)
    try:
        yield
    finally:
        lock.release()


def advisory_key(study: str) -> int:
    """The 64-bit PostgreSQL advisory lock key of a study's set-up."""
    digest = hashlib.sha256(f"autotune-study-setup\0{study}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _advisory_lock(url: str, study: str, shown: str, timeout_s: float) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    key = advisory_key(study)
    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        connection = engine.connect()
    except Exception as exc:  # SQLAlchemy's and the driver's errors, and ImportError for no driver
        raise UserError(f"cannot open storage {shown}: {_first_line(exc)}") from None
    try:
        deadline = time.monotonic() + timeout_s
        query = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
        while not connection.execute(query, {"key": key}).scalar():
            connection.rollback()
            if time.monotonic() > deadline:
                raise UserError(f"another worker is still setting up study {study!r} after {timeout_s:g}s; "
                                "try again")
            time.sleep(POLL_SECONDS)
        connection.commit()  # a session-level advisory lock outlives the transaction
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # closing the session drops the lock anyway
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
    finally:
        connection.close()
        engine.dispose()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
