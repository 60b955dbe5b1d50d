"""Study storage: the storage URL, opening an existing study, and keeping passwords out of output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import optuna

from autotune.errors import UserError

DEFAULT_STORAGE = "sqlite:///autotune.db"


def storage_url(storage: str | None) -> str:
    """The storage URL a command uses: ``--storage``, else :data:`DEFAULT_STORAGE`."""
    return storage or DEFAULT_STORAGE


def load_existing_study(storage: str | None, name: str) -> optuna.Study:
    """Open a study that must already exist (for commands that read one).

    Raises:
        UserError: The storage cannot be opened or has no such study.
    """
    url = storage or DEFAULT_STORAGE
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise UserError(f"no study storage at {path}: run `autotune run` first, or give --storage")
    with storage_errors(url):
        storage_ = optuna.storages.RDBStorage(url, heartbeat_interval=None, skip_table_creation=False)
        names = [s.study_name for s in storage_.get_all_studies()]
        if name not in names:
            shown = ", ".join(names) or "none"
            raise UserError(f"no study {name!r} in {redact(url)} (studies: {shown})")
        return optuna.load_study(study_name=name, storage=storage_)


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite://`` storage URL, or None for any other storage."""
    prefix, sep, rest = url.partition("://")
    if not sep or not prefix.startswith("sqlite"):
        return None
    database = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel.db, sqlite:////abs.db
    return Path(database.split("?", 1)[0] or ":memory:")


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn the errors of opening a storage (Optuna's, SQLAlchemy's, a driver's) into one-line UserErrors."""
    try:
        yield
    except UserError:
        raise
    except (ImportError, ValueError, optuna.exceptions.OptunaError) as exc:
        raise UserError(f"cannot open storage {redact(url)}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # SQLAlchemy's errors: the driver does not import SQLAlchemy itself
        if type(exc).__module__.startswith("sqlalchemy"):
            raise UserError(f"cannot open storage {redact(url)}: {str(exc).splitlines()[0]}") from None
        raise


def redact(url: str) -> str:
    """A storage URL with its password replaced by ``***`` (also in a URL that lacks its ``scheme://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    credentials, at, location = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}{at}{location}"


def password_of(url: str) -> str | None:
    """The password a storage URL holds, as typed, or None."""
    shown = redact(url)
    if shown == url:
        return None
    rest = url.partition("://")[2] or url
    return rest.rpartition("@")[0].partition(":")[2] or None
