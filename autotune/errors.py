"""The error a user can fix: printed as one line by the CLI, exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, an option, a value); the message is one line."""
