"""Exit statuses of the ``autotune`` command, in one place (the README's table says the same).

Where a convention exists it is followed: sysexits.h for 74 and 75, the shell for 126, 127 and 130.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """How an ``autotune`` command ended."""

    OK = 0
    """Done."""
    FAILED = 1
    """``run``: no trial succeeded; ``bench``: the trial failed; ``verify``: the stored result does not hold;
    ``exec`` with several instances: what the first failing instance returned is passed on instead."""
    USAGE = 2
    """Bad input: nothing was changed."""
    REPORT_NOT_WRITTEN = 74
    """EX_IOERR: every trial is stored, but the report could not be written."""
    CORES_BUSY = 75
    """EX_TEMPFAIL: ``--no-wait`` and another autotune worker is measuring on this host's cores."""
    NOT_EXECUTABLE = 126
    """``exec``: the command was found but cannot be executed (as in a shell)."""
    NOT_FOUND = 127
    """``exec``: the command was not found (as in a shell)."""
    INTERRUPTED = 130
    """Ctrl-C (128 + SIGINT): the running trial was stopped and recorded as interrupted."""
