"""``autotune dashboard``: optuna-dashboard on the study storage, on this machine only by default.

optuna-dashboard reads Optuna's storage unchanged, so every trial's params and user attributes (the
config, outcome, reason, figures, host and worker) show in its trial table. This module opens the
storage (refusing a SQLite file that does not exist instead of creating an empty one), serves
:func:`optuna_dashboard.wsgi` with the standard library's threaded WSGI server, and binds to loopback
unless ``--host`` names another address, in which case it warns: the dashboard has no
authentication, and its API can rename and delete studies.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from socketserver import ThreadingMixIn
from typing import Any, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from autotune.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def serve(url: str | None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, out: TextIO | None = None) -> int:
    """Serve optuna-dashboard on ``url`` at ``host:port`` until Ctrl-C or SIGTERM; return 0.

    Raises:
        UserError: The storage cannot be opened or read, or the address cannot be bound.
    """
    from autotune.study import DEFAULT_STORAGE, redact

    out = out or sys.stdout
    url = url or DEFAULT_STORAGE
    shown = redact(url)
    storage = open_storage(url, shown)
    studies = _study_names(storage, shown)

    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage)
    try:
        server = make_server(host, port, app, server_class=_server_class(host), handler_class=_QuietHandler)
    except OSError as exc:  # address in use, not an address of this machine, unknown name
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    warning = bind_warning(host)
    if warning:
        print(f"autotune: warning: {warning}", file=sys.stderr, flush=True)
    bound_port = server.server_address[1]
    shown_host = f"[{host}]" if ":" in host else host
    listing = ", ".join(studies) if studies else "no study yet"
    print(f"optuna-dashboard {optuna_dashboard.__version__} on http://{shown_host}:{bound_port}/ "
          f"reading {shown} ({listing}); Ctrl-C stops it", file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def open_storage(url: str, shown: str | None = None) -> Any:
    """Open ``url`` as Optuna RDB storage for reading, without creating tables or files.

    Raises:
        UserError: A SQLite file that does not exist, an unknown URL, an unreachable server.
    """
    import optuna

    shown = shown or url
    from autotune.study import sqlite_file

    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise UserError(f"no study storage at {path}: run `autotune run` first, or give --storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
    except Exception as exc:  # SQLAlchemy's URL and driver errors, ImportError for a missing driver
        raise UserError(f"cannot open storage {shown}: {_first_line(exc)}") from None


def bind_warning(host: str) -> str | None:
    """The warning to print for listening on ``host``, or None for a loopback address."""
    if _is_loopback(host):
        return None
    return (f"the dashboard listens on {host}, reachable from other machines, without authentication: "
            "anyone who can connect can read the study and rename or delete studies")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def _study_names(storage: Any, shown: str) -> list[str]:
    try:
        return [study.study_name for study in storage.get_all_studies()]
    except Exception as exc:  # no Optuna tables, server gone, permission denied
        raise UserError(f"cannot read studies from storage {shown}: {_first_line(exc)}") from None


def _server_class(host: str) -> type[WSGIServer]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return type("_Server", (ThreadingMixIn, WSGIServer), {"daemon_threads": True, "address_family": family})


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _first_line(exc: BaseException) -> str:
    """The first line of the error, or of its cause where Optuna wrapped a driver's error in a vaguer one."""
    import optuna

    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
