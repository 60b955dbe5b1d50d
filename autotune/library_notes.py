"""Warnings and log records of the libraries autotune drives (Optuna, SQLAlchemy, matplotlib, ...).

Libraries warn about their own affairs ("There are no complete trials.", importance estimates resting
on few trials, experimental APIs), on stderr, in their own formats. A user of autotune cannot act on
most of them, and they bury the one line that matters. :func:`collected` takes them over for the
length of one command: Python warnings and the ``optuna`` logger's records are kept, and the command
ends with one line saying how many there were. ``autotune --debug`` leaves them on stderr as the
libraries print them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

# Loggers of libraries whose records are taken over (Optuna adds its own stderr handler to its logger).
LIBRARY_LOGGERS = ("optuna",)
# Longest excerpt of the first note shown in the closing line.
EXCERPT_CHARS = 100


@dataclass
class LibraryNotes:
    """What the libraries said during one command, in order, each distinct text once.

    Attributes:
        notes: ``"<library>: <message>"`` lines.
    """

    notes: list[str] = field(default_factory=list)

    def add(self, source: str, message: str) -> None:
        """Keep one note (a repeat of an earlier one is dropped)."""
        text = f"{source}: {' '.join(str(message).split())}"
        if text not in self.notes:
            self.notes.append(text)

    def summary(self) -> str | None:
        """One line for the end of the command, or None when the libraries said nothing."""
        if not self.notes:
            return None
        first = self.notes[0]
        if len(first) > EXCERPT_CHARS:
            first = first[: EXCERPT_CHARS - 3] + "..."
        more = "" if len(self.notes) == 1 else f" and {len(self.notes) - 1} more"
        return f"note: library warnings hidden ({first}{more}); autotune --debug shows them"


class _Collector(logging.Handler):
    def __init__(self, notes: LibraryNotes) -> None:
        super().__init__(level=logging.WARNING)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.add(record.name.split(".")[0], record.getMessage())


@contextlib.contextmanager
def collected(debug: bool = False) -> Iterator[LibraryNotes]:
    """Collect library warnings and log records into the yielded :class:`LibraryNotes`.

    Args:
        debug: Leave everything as the libraries print it (nothing is collected).
    """
    notes = LibraryNotes()
    if debug:
        yield notes
        return
    collector = _Collector(notes)
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers = [collector]
        logger.propagate = False

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        notes.add(category.__module__.split(".")[0] if category.__module__ != "builtins" else
                  filename.rpartition("site-packages/")[2].split("/")[0] or "python", f"{message}")

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield notes
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate
